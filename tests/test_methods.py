"""xdc.methods: which labels each method's heads predict and how their losses add up, checked on real
label arrays and real losses (through xdc.training.loop.PretrainModel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xdc.config import ClusterConfig
from xdc.methods import get_method, head_losses, reduce_heads

CFG = ClusterConfig(k_video=3, k_audio=5, k_joint=7)
N = 40


def cluster_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"video": rng.integers(0, 3, N), "audio": rng.integers(0, 5, N), "joint": rng.integers(0, 7, N)}


def confident_logits(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Logits that put almost all mass on `labels`: cross-entropy ~0 only against these labels."""
    logits = torch.full((len(labels), num_classes), -20.0)
    logits[torch.arange(len(labels)), torch.as_tensor(labels)] = 20.0
    return logits


def head_table(name: str) -> set[tuple[str, str, int]]:
    return {(h.encoder, h.target, h.num_classes) for h in get_method(name).heads(CFG)}


def test_heads_of_each_method():
    assert head_table("xdc") == {("video", "audio", 5), ("audio", "video", 3)}
    assert head_table("sdc") == {("video", "video", 3), ("audio", "audio", 5)}
    assert head_table("mdc") == {("video", "video", 3), ("video", "audio", 5),
                                 ("audio", "audio", 5), ("audio", "video", 3)}
    assert head_table("cdc") == {("video", "joint", 7), ("audio", "joint", 7)}
    assert head_table("rand") == {("video", "video", 3), ("audio", "audio", 5)}


@pytest.mark.parametrize("name", ["xdc", "sdc", "mdc", "cdc"])
def test_loss_is_low_only_when_each_head_predicts_its_routed_labels(name):
    method = get_method(name)
    clusters = {c: cluster_arrays()[c] for c in method.clusterings}
    labels = method.make_labels(clusters, N, iteration=0, seed=0, cfg=CFG)
    heads = method.heads(CFG)
    targets = {k: torch.as_tensor(v) for k, v in labels.items()}
    routed = {h.name: confident_logits(labels[h.target], h.num_classes) for h in heads}
    assert head_losses(routed, targets, heads).max() < 1e-6
    # Swap the modalities' label arrays: a method whose routing ignored `target` would not notice.
    if "video" in labels:
        swapped = {h.name: confident_logits(labels["video" if h.encoder == "video" else "audio"]
                                            % h.num_classes, h.num_classes) for h in heads}
        own_is_routed = all(h.target == h.encoder for h in heads)
        assert (head_losses(swapped, targets, heads).max() < 1e-6) == own_is_routed


def test_xdc_video_head_gets_audio_clusters():
    method = get_method("xdc")
    arrays = cluster_arrays()
    labels = method.make_labels({"video": arrays["video"], "audio": arrays["audio"]}, N, 0, 0, CFG)
    video_head = next(h for h in method.heads(CFG) if h.encoder == "video")
    np.testing.assert_array_equal(labels[video_head.target], arrays["audio"])
    saved = method.modality_labels(labels)  # what labels_video.npy / labels_audio.npy hold
    np.testing.assert_array_equal(saved["video"], arrays["video"])
    np.testing.assert_array_equal(saved["audio"], arrays["audio"])


def test_cdc_saves_the_joint_labels_for_both_modalities():
    method = get_method("cdc")
    assert method.clusterings == ("joint",)
    joint = cluster_arrays()["joint"]
    saved = method.modality_labels(method.make_labels({"joint": joint}, N, 0, 0, CFG))
    np.testing.assert_array_equal(saved["video"], joint)
    np.testing.assert_array_equal(saved["audio"], joint)
    assert method.modality_num_classes(CFG) == {"video": 7, "audio": 7}


def test_rand_labels_are_uniform_redrawn_each_iteration_and_reproducible():
    method = get_method("rand")
    assert method.clusterings == ()
    first = method.make_labels({}, 2000, iteration=0, seed=1, cfg=CFG)
    again = method.make_labels({}, 2000, iteration=0, seed=1, cfg=CFG)
    second = method.make_labels({}, 2000, iteration=1, seed=1, cfg=CFG)
    np.testing.assert_array_equal(first["video"], again["video"])  # same on every rank
    assert (first["video"] != second["video"]).mean() > 0.5  # re-drawn
    counts = np.bincount(first["audio"], minlength=5)
    assert first["audio"].max() < 5 and counts.min() > 300  # uniform over k_audio classes


def test_superv_needs_labels_and_predicts_them():
    with pytest.raises(ValueError, match="label"):
        get_method("superv")
    truth = np.array([0, 1, 2, 1, 0])
    method = get_method("superv", truth)
    assert head_table_of(method) == {("video", "true", 3), ("audio", "true", 3)}
    np.testing.assert_array_equal(method.make_labels({}, 5, 0, 0, CFG)["true"], truth)


def head_table_of(method):
    return {(h.encoder, h.target, h.num_classes) for h in method.heads(CFG)}


def test_safeguard_defaults_and_overrides():
    sdc, xdc = get_method("sdc"), get_method("xdc")
    assert sdc.use_reassign_empty(CFG) and sdc.use_uniform_sampling(CFG)
    assert not xdc.use_reassign_empty(CFG) and not xdc.use_uniform_sampling(CFG)
    forced = ClusterConfig(reassign_empty=True, uniform_sampling=False)
    assert xdc.use_reassign_empty(forced) and not sdc.use_uniform_sampling(forced)


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method 'dc'"):
        get_method("dc")


def test_head_reduction_sum_gives_each_head_its_full_gradient():
    losses = torch.tensor([1.0, 3.0], requires_grad=True)
    reduce_heads(losses, "sum").backward()
    assert losses.grad.tolist() == [1.0, 1.0]
    losses.grad = None
    reduce_heads(losses, "mean").backward()
    assert losses.grad.tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="head reduction"):
        reduce_heads(losses, "max")


def test_cdc_clusters_the_joint_features_it_builds():
    from xdc.clustering import Features

    present = np.array([True, False, True])
    features = Features({"video": np.array([[3.0, 4.0], [9, 9], [1, 0]]),
                         "audio": np.array([[0.0, 2.0], [9, 9], [0, 5]])}, np.arange(3), present)
    joint = get_method("cdc").cluster_inputs(features)["joint"]
    np.testing.assert_allclose(joint, [[0.6, 0.8, 0, 1], [1, 0, 0, 1]])  # each half L2-normalised
    own = get_method("xdc").cluster_inputs(features)
    assert set(own) == {"video", "audio"} and own["video"].shape == (2, 2)


def test_superv_multi_label_rows_train_sigmoid_heads():
    method = get_method("superv", ["dog|bark", "cat", "bark", "cat|dog"])
    assert method.multilabel and method.classes == ["bark", "cat", "dog"]
    targets = method.make_labels({}, 4, 0, 0, CFG)["true"]
    np.testing.assert_array_equal(targets, [[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1]])
    heads = method.heads(CFG)
    assert all(h.multilabel and h.num_classes == 3 for h in heads)
    assert heads[0].chance_loss == pytest.approx(np.log(2))  # every logit 0
    exact = {h.name: torch.as_tensor(targets, dtype=torch.float32) * 40 - 20 for h in heads}
    losses = head_losses(exact, {"true": torch.as_tensor(targets)}, heads)
    assert losses.max() < 1e-6  # right on every class
    wrong = {h.name: -v for h, v in zip(heads, exact.values())}
    assert head_losses(wrong, {"true": torch.as_tensor(targets)}, heads).min() > 5
    # one class per row for the cluster statistics: the first of its classes by name
    np.testing.assert_array_equal(method.modality_labels({"true": targets})["video"], [0, 1, 0, 1])
    single = get_method("superv", ["dog", "cat", "dog"])
    assert not single.multilabel and single.make_labels({}, 3, 0, 0, CFG)["true"].tolist() == [1, 0, 1]


def _encoder_gradients(model, specs, video, audio, targets, reduction, only=None):
    """Each encoder's gradient (flattened) of the heads' loss, or of head `only` alone."""
    model.zero_grad()
    losses = head_losses(model(video, audio), targets, specs)
    loss = losses[[s.name for s in specs].index(only)] if only else reduce_heads(losses, reduction)
    loss.backward()
    return {name: torch.cat([p.grad.flatten() for p in enc.parameters()])
            for name, enc in (("video", model.video_encoder), ("audio", model.audio_encoder))}


def test_sum_gives_each_xdc_encoder_the_gradient_of_its_head_alone():
    """Table 2's lr is a single-head network's: with head_reduction=sum (the default) each XDC
    encoder gets exactly its own head's gradient; `mean` would halve it."""
    from xdc.config import OptimConfig
    from xdc.models import audio_encoder, video_encoder
    from xdc.training.loop import PretrainModel

    assert OptimConfig().head_reduction == "sum"
    torch.manual_seed(0)
    model = PretrainModel(video_encoder("r2plus1d_18", 4), audio_encoder(4))
    specs = get_method("xdc").heads(CFG)
    model.reset_heads(specs)
    model.eval()  # BatchNorm on running statistics: the two passes see the same function
    video, audio = torch.randn(4, 3, 4, 16, 16), torch.randn(4, 1, 40, 32)
    targets = {"video": torch.tensor([0, 1, 2, 0]), "audio": torch.tensor([4, 3, 2, 1])}
    both = _encoder_gradients(model, specs, video, audio, targets, "sum")
    mean = _encoder_gradients(model, specs, video, audio, targets, "mean")
    for spec in specs:  # xdc: video_to_audio trains the video encoder, audio_to_video the audio one
        alone = _encoder_gradients(model, specs, video, audio, targets, "sum", only=spec.name)
        assert torch.allclose(both[spec.encoder], alone[spec.encoder], atol=1e-7)
        assert torch.allclose(mean[spec.encoder], alone[spec.encoder] / 2, atol=1e-7)
        assert alone[spec.encoder].abs().sum() > 0
