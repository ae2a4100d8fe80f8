"""Clustering of whole-dataset embeddings (HCSC's prototype hierarchy), independent of training and of Ray."""

from pipeline.clustering.agreement import adjusted_rand_index, normalized_mutual_info
from pipeline.clustering.hierarchy import Hierarchy, Level, faiss_gpu_available, hierarchical_kmeans

__all__ = [
    "Hierarchy",
    "Level",
    "adjusted_rand_index",
    "faiss_gpu_available",
    "hierarchical_kmeans",
    "normalized_mutual_info",
]
