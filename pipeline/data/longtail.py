"""Long-tailed subsampling (CIFAR-LT's exponential profile) and many/medium/few-shot class groups."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data.errors import DataError
from pipeline.data.source import MapSource, count_classes

MANY, MEDIUM, FEW = 0, 1, 2


def long_tail_counts(class_counts: np.ndarray, ratio: float) -> np.ndarray:
    """Return per-class kept counts ``int(n_max * ratio ** (-c / (C - 1)))``, capped by what each class holds."""
    counts = np.asarray(class_counts, dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0:
        raise DataError(f"class_counts must be a non-empty 1-d array, got shape {counts.shape}")
    if ratio < 1:
        raise DataError(f"long-tail ratio must be >= 1 (head / tail size), got {ratio}")
    num_classes = counts.size
    position = np.arange(num_classes) / max(num_classes - 1, 1)
    # The CIFAR-LT reference expression, n_max * (1/ratio) ** (c/(C-1)) truncated, so counts match it exactly.
    wanted = (counts.max() * (1.0 / ratio) ** position).astype(np.int64)
    return np.minimum(wanted, counts)


def long_tail_indices(labels: np.ndarray, ratio: float) -> np.ndarray:
    """Return the sorted indices that keep the first ``n_c`` samples (in source order) of each class ``c``."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"long-tail subsampling needs every sample labelled; found label {labels.min()}")
    counts = np.bincount(labels)
    kept = long_tail_counts(counts, ratio)
    order = np.argsort(labels, kind="stable")
    class_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_class = np.empty_like(labels)
    rank_in_class[order] = np.arange(labels.size) - class_start[labels[order]]
    return np.flatnonzero(rank_in_class < kept[labels])


def shot_groups(class_counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """Return 0 (many: > ``many``), 1 (medium) or 2 (few: < ``few``) per class from its training count."""
    counts = np.asarray(class_counts)
    groups = np.full(counts.shape, MEDIUM, dtype=np.int64)
    groups[counts > many] = MANY
    groups[counts < few] = FEW
    return groups


class LongTailSubset(MapSource):
    """A long-tailed subset of a map-style source, with sample indices renumbered 0..M-1."""

    def __init__(self, source: MapSource, ratio: float) -> None:
        self.source = source
        self.ratio = ratio
        self.kept = long_tail_indices(source.labels, ratio)
        super().__init__(
            labels=source.labels[self.kept],
            num_classes=source.num_classes,
            transform=source.transform,
            skip_corrupt=source.skip_corrupt,
            coarse_labels=None if source.coarse_labels is None else source.coarse_labels[self.kept],
        )

    def __len__(self) -> int:
        """Return the number of kept samples."""
        return int(self.kept.size)

    def load_image(self, index: int) -> Any:
        """Return the parent source's untransformed image behind subset index ``index``."""
        return self.source.load_image(int(self.kept[index]))

    def locate(self, index: int) -> str:
        """Return where the parent source reads subset sample ``index`` from."""
        return self.source.locate(int(self.kept[index]))

    def describe(self) -> str:
        """Return the parent's description plus the subset's ratio and size."""
        counts = count_classes(self.labels, self.num_classes)
        return (
            f"{self.source.describe()}; long-tail subset (ratio {self.ratio:g}): {len(self)} images, "
            f"{counts.max()} to {counts.min()} per class"
        )
