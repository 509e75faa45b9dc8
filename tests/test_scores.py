"""xdc.evaluation.scores: accuracies of class scores, and the baselines beside them (issue 21 item 2)."""

from __future__ import annotations

import pytest
import torch

from xdc.evaluation.scores import accuracy, baselines, video_scores


def test_accuracy_video_level_averages_softmax_over_clips():
    # Video 0: clips say class 1, 1, 0 but clip 2 is very sure of class 0 -> the average picks 0.
    logits = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [9.0, 0.0, 0.0]],
                           [[0.0, 0.0, 2.0], [0.0, 0.0, 2.0], [0.0, 0.0, 2.0]]])
    scores = accuracy(logits, torch.tensor([0, 2]))
    assert scores["top1_clip"] == pytest.approx(4 / 6)
    assert scores["top1_video"] == 1.0
    assert accuracy(logits, torch.tensor([1, 2]))["top1_video"] == 0.5


def test_chance_majority_and_top5_only_with_more_than_five_classes():
    assert baselines(torch.tensor([0, 0, 0, 1]), 3) == {"chance": pytest.approx(1 / 3), "majority": 0.75}
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.0, 0.1, 0.3], [0.9, 0.0, 0.0, 0.0, 0.0, 0.1]])
    assert video_scores(scores, torch.tensor([2, 0])) == {"top1_video": 0.5, "top5_video": 1.0}
    assert video_scores(scores[:, :5], torch.tensor([2, 0])) == {"top1_video": 0.5}
    logits = torch.zeros(2, 3, 4)
    assert set(accuracy(logits, torch.tensor([0, 1]))) == {"top1_clip", "top1_video"}
