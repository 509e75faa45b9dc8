"""Clustering kept apart from training: features, faiss k-means (DeepCluster tricks), metrics."""

from .features import Features, NoFeaturesError, extract_features, extracted, recompute_batchnorms, shard_indices
from .handcrafted import handcrafted_features
from .kmeans import (
    ClusterResult,
    cluster_features,
    l2_normalise,
    random_labels,
    reassign_empty_clusters,
    uniform_over_clusters_weights,
)
from .metrics import (ari, cluster_sizes_summary, cluster_stats, hungarian_accuracy, label_entropy, nmi,
                      per_cluster_purity, purity)

__all__ = [
    "ClusterResult", "Features", "NoFeaturesError", "ari", "cluster_features", "cluster_sizes_summary",
    "cluster_stats", "extract_features", "extracted", "handcrafted_features", "hungarian_accuracy",
    "l2_normalise", "label_entropy", "nmi", "per_cluster_purity", "purity", "random_labels",
    "reassign_empty_clusters", "recompute_batchnorms", "shard_indices", "uniform_over_clusters_weights",
]
