"""Weighted k-nearest-neighbour classification (the InstDisc / MoCo monitor) and its raw-pixel baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def weighted_knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Return the weighted-kNN class prediction ``[M]`` of each test row against the training set.

    Features are assumed L2-normalised, so similarity is the dot product. Each test row takes its
    ``min(k, N)`` most similar training rows; neighbour ``j`` votes for its class with weight
    ``exp(sim_j / T)``, and the class with the largest total wins. Test rows are processed
    ``chunk_size`` at a time so that only a ``[chunk, N]`` similarity block is held in memory.
    """
    if train_features.dim() != 2 or test_features.dim() != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"expected train [N, D] and test [M, D] features, got {tuple(train_features.shape)} "
            f"and {tuple(test_features.shape)}"
        )
    if train_labels.shape != (train_features.shape[0],):
        raise ValueError(f"expected train labels [{train_features.shape[0]}], got {tuple(train_labels.shape)}")
    if train_features.shape[0] == 0:
        raise ValueError("the kNN memory bank is empty")
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k and chunk_size must be positive, got k {k} chunk_size {chunk_size}")
    neighbours = min(k, train_features.shape[0])
    train_labels = train_labels.long()
    test_features = test_features.to(train_features.dtype)
    predictions = []
    for start in range(0, test_features.shape[0], chunk_size):
        similarity = test_features[start : start + chunk_size] @ train_features.T  # [C, N]
        top_similarity, top_index = similarity.topk(neighbours, dim=1)  # [C, k]
        # Dividing every weight of a row by exp(max / T) leaves the argmax unchanged and cannot overflow.
        weights = ((top_similarity - top_similarity[:, :1]) / temperature).exp()  # [C, k]
        scores = weights.new_zeros(weights.shape[0], num_classes)  # [C, num_classes]
        scores.scatter_add_(1, train_labels[top_index], weights)
        predictions.append(scores.argmax(dim=1))
    if not predictions:
        return torch.zeros(0, dtype=torch.long, device=test_features.device)
    return torch.cat(predictions)


def knn_top1(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Return the weighted-kNN top-1 accuracy in percent of the test set (see ``weighted_knn_predict``)."""
    predictions = weighted_knn_predict(
        train_features, train_labels, test_features, num_classes, k, temperature, chunk_size
    )
    if test_labels.shape != predictions.shape:
        raise ValueError(f"expected test labels [{predictions.shape[0]}], got {tuple(test_labels.shape)}")
    if predictions.numel() == 0:
        raise ValueError("the kNN test set is empty")
    return float((predictions == test_labels.to(predictions.device).long()).double().mean() * 100.0)


def pixel_knn_top1(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Return the weighted-kNN top-1 accuracy in percent on raw pixels: the floor a learned representation must beat.

    Each image ``[N, ...]`` is flattened to one vector and L2-normalised (no mean subtraction or
    whitening), then classified exactly as learned features are.
    """
    train_features = _flatten_normalised(train_images)  # [N, C*H*W]
    test_features = _flatten_normalised(test_images)  # [M, C*H*W]
    return knn_top1(train_features, train_labels, test_features, test_labels, num_classes, k, temperature, chunk_size)


def _flatten_normalised(images: torch.Tensor) -> torch.Tensor:
    """Return each image flattened to one L2-normalised row ``[N, prod(rest)]`` (integer pixels become float32)."""
    rows = images.reshape(images.shape[0], -1)
    return F.normalize(rows if rows.is_floating_point() else rows.float(), dim=1)
