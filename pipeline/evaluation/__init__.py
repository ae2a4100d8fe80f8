"""Evaluation protocols: the weighted kNN classifier and its raw-pixel baseline."""

from pipeline.evaluation.knn import knn_top1, pixel_knn_top1, weighted_knn_predict

__all__ = ["knn_top1", "pixel_knn_top1", "weighted_knn_predict"]
