"""Classification metrics of a probe: top-k, per-class accuracy, many/medium/few-shot groups, logit ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Return the percentage of rows whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    hits = (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1)
    return float(hits.double().mean() * 100.0)


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return each class's accuracy in percent ``# [num_classes]`` (NaN for a class absent from ``labels``)."""
    totals = torch.bincount(labels, minlength=num_classes).double()
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes).double()
    return torch.where(totals > 0, correct / totals.clamp_min(1) * 100.0, torch.full_like(totals, float("nan")))


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return counts ``[true class, predicted class]`` ``# [num_classes, num_classes]``."""
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


@dataclass(frozen=True)
class ShotThresholds:
    """A class is many-shot with more than ``many`` training images, few-shot with fewer than ``few``."""

    many: float
    few: float
    scaled: bool


def shot_thresholds(
    train_counts: torch.Tensor, many: float = 100, few: float = 20, scale: bool = True
) -> ShotThresholds:
    """Return the many/few thresholds: the given ones, or (``scale`` and a group would be empty) ones from the data.

    Scaled thresholds sit halfway between distinct training counts: about the lowest third of the
    distinct counts is few-shot, the highest third many-shot, the rest medium, so each group holds a
    class whenever the counts take at least three distinct values (else the given thresholds stay).
    """
    groups = _groups(train_counts, many, few)
    values = torch.unique(train_counts[train_counts > 0]).double()  # sorted distinct counts
    if not scale or all(bool(group.any()) for group in groups) or values.numel() < 3:
        return ShotThresholds(float(many), float(few), scaled=False)
    third = round(values.numel() / 3)
    last_few = max(0, third - 1)
    first_many = min(values.numel() - 1, max(last_few + 2, values.numel() - third))
    few_threshold = float(values[last_few] + values[last_few + 1]) / 2
    many_threshold = float(values[first_many - 1] + values[first_many]) / 2
    return ShotThresholds(many=many_threshold, few=few_threshold, scaled=True)


def _groups(train_counts: torch.Tensor, many: float, few: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the many, medium and few masks over classes with training images."""
    present = train_counts > 0
    many_mask = present & (train_counts > many)
    few_mask = present & (train_counts < few)
    return many_mask, present & ~many_mask & ~few_mask, few_mask


def shot_accuracy(
    per_class: torch.Tensor, train_counts: torch.Tensor, thresholds: ShotThresholds
) -> dict[str, float | None]:
    """Return the mean per-class accuracy of the many, medium and few groups (None for an empty group)."""
    result: dict[str, float | None] = {}
    for name, mask in zip(
        ("many", "medium", "few"), _groups(train_counts, thresholds.many, thresholds.few), strict=True
    ):
        values = per_class[mask & ~per_class.isnan()]
        result[name] = float(values.mean()) if values.numel() else None
    return result


def ensemble_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Return the mean of several classifiers' logits."""
    return torch.stack(list(logits)).mean(dim=0)
