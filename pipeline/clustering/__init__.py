"""Clustering of whole-dataset embeddings (HCSC's prototype hierarchy), independent of training and of Ray."""

from pipeline.clustering.hierarchy import Hierarchy, Level, faiss_gpu_available, hierarchical_kmeans

__all__ = ["Hierarchy", "Level", "faiss_gpu_available", "hierarchical_kmeans"]
