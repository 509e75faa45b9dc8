"""Accuracies of class scores, and the baselines printed beside them.

Video-level scores average a video's clips: a classifier's softmax over its `data.eval_clips`
clips (`accuracy`), or kNN's votes (`evaluation.knn`). Top-5 is reported only with more than 5
classes: with 5 or fewer the true class is always among the top 5, and 1.000 says nothing.
A score means something beside `chance` (1 / number of classes) and `majority` (the share of the
test set's most frequent class: what always answering that class scores).
"""

from __future__ import annotations

import torch

TOP5 = 5


def top_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Share of rows of `scores` (V×C) whose label is among their k highest classes (all of
    them when there are fewer than k)."""
    top = scores.topk(min(k, scores.shape[-1]), -1).indices
    return float((top == labels.to(top.device)[:, None]).any(-1).float().mean())


def video_scores(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1_video, and top5_video with more than 5 classes, of video class scores V×C."""
    result = {"top1_video": float((scores.argmax(-1) == labels.to(scores.device)).float().mean())}
    if scores.shape[-1] > TOP5:
        result["top5_video"] = top_k(scores, labels, TOP5)
    return result


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """top1_clip (each clip alone), top1_video and top5_video (softmax averaged over a video's
    clips; `video_scores`) from logits V×N×C and labels V."""
    probs = logits.float().softmax(-1)
    labels = labels.to(probs.device)
    return {"top1_clip": float((probs.argmax(-1) == labels[:, None]).float().mean()),
            **video_scores(probs.mean(1), labels)}


def baselines(test_labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """`chance` (1 / num_classes) and `majority` (share of the most frequent test label)."""
    counts = torch.bincount(test_labels, minlength=num_classes)
    return {"chance": 1.0 / num_classes, "majority": float(counts.max()) / max(len(test_labels), 1)}
