"""Clustering of whole-dataset embeddings (HCSC's prototype hierarchy), independent of training and of Ray."""

from pipeline.clustering.agreement import adjusted_rand_index, normalized_mutual_info
from pipeline.clustering.hierarchy import (
    Hierarchy,
    Level,
    check_sizes,
    faiss_gpu_available,
    hierarchical_kmeans,
    hierarchy_sizes,
    scaled_sizes,
)

__all__ = [
    "Hierarchy",
    "Level",
    "adjusted_rand_index",
    "check_sizes",
    "faiss_gpu_available",
    "hierarchical_kmeans",
    "hierarchy_sizes",
    "normalized_mutual_info",
    "scaled_sizes",
]
