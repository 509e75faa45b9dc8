"""xdc.evaluation.knn: weighted kNN votes and retrieval recall on features made here (the modes end
to end: tests/test_finetune.py)."""

from __future__ import annotations

import numpy as np
import torch

from xdc.evaluation.knn import knn_votes, recall, video_features
from xdc.evaluation.scores import video_scores


def _clustered(per_class, num_classes=4, dim=16, noise=0.3, seed=0):
    """Clip features V×N×D around one random direction per class (the same for every seed), and
    the labels V."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(100 + seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels][:, None] + noise * torch.randn(len(labels), 3, dim, generator=g), labels


def test_knn_is_perfect_on_separable_features_and_falls_with_shuffled_labels(monkeypatch):
    from xdc.evaluation import knn

    train, train_labels = _clustered(30)
    test, test_labels = _clustered(10, seed=1)
    train, test = video_features(train), video_features(test)
    assert torch.allclose(train.norm(dim=1), torch.ones(len(train)))
    votes = knn_votes(train, train_labels, test, 4, k=20, temperature=0.07)
    assert video_scores(votes, test_labels) == {"top1_video": 1.0}  # no top-5 of 4 classes
    monkeypatch.setattr(knn, "CHUNK", 7)  # test videos in chunks: the same neighbours
    assert torch.equal(knn_votes(train, train_labels, test, 4, k=20, temperature=0.07), votes)
    assert recall(train, train_labels, test, test_labels) == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    shuffled = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(2))]
    votes = knn_votes(train, shuffled, test, 4, k=20, temperature=0.07)
    assert video_scores(votes, test_labels)["top1_video"] < 0.6
    assert recall(train, shuffled, test, test_labels)["recall@1"] < 0.6


def test_knn_votes_are_weighted_by_similarity():
    # One neighbour of class 0 at cosine 1, two of class 1 at cosine 0.8: with DINO's T = 0.07
    # the close one outvotes the two (e^(1/T) > 2·e^(0.8/T)); with a large T the majority wins.
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    labels, query = torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]])
    votes = knn_votes(train, labels, query, 2, k=3, temperature=0.07)
    assert votes.argmax().item() == 0
    torch.testing.assert_close(votes[0], torch.tensor([np.exp(1 / 0.07), 2 * np.exp(0.8 / 0.07)], dtype=torch.float32))
    assert knn_votes(train, labels, query, 2, k=3, temperature=100.0).argmax().item() == 1
    assert knn_votes(train, labels, query, 2, k=1, temperature=100.0).argmax().item() == 0
    # Retrieval: the nearest is class 0, so a class-1 query misses at 1 and hits at 5 (k capped at 3).
    assert recall(train, labels, query, torch.tensor([1])) == {"recall@1": 0.0, "recall@5": 1.0, "recall@10": 1.0}
