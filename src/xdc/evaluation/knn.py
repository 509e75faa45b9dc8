"""Weighted k-nearest-neighbour classification and retrieval on frozen features (`xdc finetune
--mode knn | retrieval`): no training, so nothing to tune on validation videos. Test videos (and
val videos, when given) are compared with all the training videos.

Both are video-level: a video's feature is the mean of its clips' L2-normalised features,
L2-normalised again (every clip counts the same whatever its norm), and the similarity of two
videos is the cosine of their features.

- kNN (DINO's eval_knn, solo-learn's WeightedKNNClassifier): the k most similar training videos
  vote for their class with weight exp(similarity / T); the class with the largest sum wins.
- Retrieval (the protocol of the audio-visual papers on UCF101 / HMDB51): recall@k is the share
  of test videos with at least one training video of their class among their k nearest.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from xdc.config import FinetuneConfig
from xdc.evaluation.feature_cache import cached_features
from xdc.evaluation.finetune_folder import FinetuneFolder
from xdc.evaluation.labelled import Labelled
from xdc.evaluation.scores import video_scores

RECALL_AT = (1, 5, 10)
CHUNK = 4096  # test videos compared at once: the whole test × train matrix can be large (Kinetics)


def video_features(clip_features: torch.Tensor) -> torch.Tensor:
    """V×D unit vectors from clip features V×N×D (see the module docstring)."""
    return F.normalize(F.normalize(clip_features.float(), dim=-1).mean(1), dim=-1)


def nearest(train: torch.Tensor, test: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosines, indices) V_test×k of each test video's k most similar training videos, most
    similar first (k capped at the training videos); features are unit vectors."""
    found = [(chunk @ train.T).topk(min(k, len(train)), dim=1) for chunk in test.split(CHUNK)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def knn_votes(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, num_classes: int,
              k: int, temperature: float) -> torch.Tensor:
    """Class scores V_test×C: per test video, the sum of exp(cosine / T) over its k nearest
    training videos of each class (all of them when there are fewer than k). Features are unit
    vectors (`video_features`)."""
    similarity, index = nearest(train, test, k)
    votes = torch.zeros(len(test), num_classes)
    return votes.scatter_add_(1, train_labels[index], (similarity / temperature).exp())


def recall(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
           ks: tuple[int, ...] = RECALL_AT) -> dict[str, float]:
    """`recall@k` for each k: the share of test videos with a training video of their own class
    among their k most similar (cosine of unit vectors; k capped at the training videos)."""
    hits = train_labels[nearest(train, test, max(ks))[1]] == test_labels[:, None]
    return {f"recall@{k}": float(hits[:, :k].any(1).float().mean()) for k in ks}


def unit_video_features(encoder: nn.Module, cfg: FinetuneConfig, modality: str, data: Labelled,
                        folder: FinetuneFolder, device: torch.device, key: str) -> tuple[dict, dict, dict]:
    """(unit video features per subset, their labels, the cached features' skips)."""
    cached = cached_features(encoder, data.rows, cfg, modality, device, folder, key)
    features = {name: video_features(cached[name]) for name in data.rows}
    labels = {name: data.labels[name][cached[f"{name}_index"]] for name in data.rows}
    return features, labels, cached["skipped"]


def run_knn(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled, folder: FinetuneFolder,
            device: torch.device, key: str) -> dict:
    """Weighted kNN of the test (and val) videos against the training videos, video-level.
    Returns results.json's mode entries."""
    features, labels, skipped = unit_video_features(encoder, cfg, modality, data, folder, device, key)

    def score(name: str) -> dict:
        votes = knn_votes(features["train"], labels["train"], features[name], len(data.classes),
                          cfg.knn_k, cfg.knn_temperature)
        return {**video_scores(votes, labels[name]), "videos": len(labels[name])}  # top-1 (top-5: > 5 classes)

    test = score("test")
    return {"knn_k": cfg.knn_k, "knn_temperature": cfg.knn_temperature,
            **({"val": score("val")} if "val" in features else {}),
            **{name: value for name, value in test.items() if name != "videos"}, "test_videos": test["videos"],
            "skipped": skipped}


def run_retrieval(cfg: FinetuneConfig, encoder: nn.Module, modality: str, data: Labelled, folder: FinetuneFolder,
                  device: torch.device, key: str) -> dict:
    """recall@1/5/10 of the test (and val) videos against the training videos. Returns
    results.json's mode entries."""
    features, labels, skipped = unit_video_features(encoder, cfg, modality, data, folder, device, key)

    def score(name: str) -> dict:
        return {**recall(features["train"], labels["train"], features[name], labels[name]),
                "videos": len(labels[name])}

    test = score("test")
    return {**({"val": score("val")} if "val" in features else {}),
            **{f"recall@{k}": test[f"recall@{k}"] for k in RECALL_AT}, "test_videos": test["videos"],
            "skipped": skipped}
