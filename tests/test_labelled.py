"""xdc.evaluation.labelled: the labelled subsets' warnings: what makes a score untrustworthy
(issue 21 item 2)."""

from __future__ import annotations

import torch

from xdc.config import FinetuneConfig, load_config
from xdc.data.manifest import class_indices
from xdc.evaluation.labelled import Labelled, hold_out, input_warnings


def labelled(**subsets: list[str]) -> Labelled:
    """A Labelled of subsets given as label lists (every video a distinct path)."""
    rows = {name: [{"path": f"/videos/{name}_{i}.mp4", "label": label} for i, label in enumerate(labels)]
            for name, labels in subsets.items()}
    classes, _ = class_indices(subsets["train"])
    return Labelled(rows, {name: torch.as_tensor(class_indices(labels, classes)[1]) for name, labels in subsets.items()},
                    classes)


def config(mode: str, lrs: list[float]) -> FinetuneConfig:
    return load_config("tiny", [f"mode={mode}", f"fc_lrs={lrs}", f"lrs={lrs}"], schema=FinetuneConfig)


def test_no_warning_for_a_sound_split():
    data = labelled(train=list("aabbcc"), val=list("aabbcc"), test=list("abcabc"))
    assert input_warnings(data, config("linear", [0.01, 0.1])) == []


def test_one_class_in_training_or_in_the_test_set_is_warned():
    one = input_warnings(labelled(train=list("aaa"), test=list("aa")), config("knn", [0.1]))
    assert len(one) == 1 and one[0].startswith("the training videos are all of one class (a)")
    test = input_warnings(labelled(train=list("aabb"), test=list("bbb")), config("knn", [0.1]))
    assert len(test) == 1 and test[0].startswith("the test videos are all of one class (b)")


def test_an_lr_chosen_on_fewer_than_two_val_videos_of_a_class_is_warned():
    # Seven val videos for three classes (more than 2 per class on average), but one of class c.
    data = labelled(train=list("aabbcc"), val=list("aaabbbc"), test=list("abc"))
    warned = input_warnings(data, config("fc", [0.01, 0.1]))
    assert len(warned) == 1 and warned[0].startswith("the lr is chosen on 7 validation video(s) for 3 classes, "
                                                     "fewer than 2 for 1 of them (e.g. c)")
    assert input_warnings(data, config("fc", [0.1])) == []  # one lr: nothing is chosen
    assert input_warnings(data, config("knn", [0.01, 0.1])) == []  # val only scored


def test_hold_out_is_stratified_and_seeded():
    rows = [{"path": f"{c}{i}", "label": c} for c in "ab" for i in range(10)] + [{"path": "c0", "label": "c"}]
    train, val = hold_out(rows, 0.2, seed=3)
    assert sorted(r["label"] for r in val) == ["a", "a", "b", "b"]  # the single "c" video stays in train
    assert len(train) + len(val) == len(rows)
    assert hold_out(rows, 0.2, seed=3)[1] == val
