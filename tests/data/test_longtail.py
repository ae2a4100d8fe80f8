"""Long-tail counts, indices, subsets and shot groups against the CIFAR-LT reference numbers."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.data.build import build_source
from pipeline.data.errors import DataError
from pipeline.data.longtail import LongTailSubset, long_tail_counts, long_tail_indices, shot_groups
from pipeline.data.synthetic import SyntheticShapes
from tests.data.conftest import ArrayData

CIFAR10_LT_100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def shuffled_balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """Return a balanced labels array in a random order."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


def test_cifar10_lt_ir100_counts_and_indices_from_labels() -> None:
    labels = shuffled_balanced_labels(10, 5000)
    np.testing.assert_array_equal(long_tail_counts(np.bincount(labels), 100), CIFAR10_LT_100)
    kept = long_tail_indices(labels, 100)
    assert np.all(np.diff(kept) > 0)
    np.testing.assert_array_equal(np.bincount(labels[kept]), CIFAR10_LT_100)
    for label, count in enumerate(CIFAR10_LT_100):
        first_of_class = np.flatnonzero(labels == label)[:count]
        np.testing.assert_array_equal(kept[labels[kept] == label], first_of_class)


def test_cifar100_lt_totals() -> None:
    counts = np.full(100, 500)
    assert long_tail_counts(counts, 100).sum() == 10847
    assert long_tail_counts(counts, 50).sum() == 12608
    assert long_tail_counts(counts, 10).sum() == 19573


def test_counts_capped_by_available_and_single_class() -> None:
    np.testing.assert_array_equal(long_tail_counts(np.array([100, 3, 100]), 10), [100, 3, 10])
    np.testing.assert_array_equal(long_tail_counts(np.array([7]), 10), [7])
    with pytest.raises(DataError, match="ratio must be >= 1"):
        long_tail_counts(np.array([5, 5]), 0.5)


def test_unlabelled_samples_are_rejected() -> None:
    with pytest.raises(DataError, match="found label -1"):
        long_tail_indices(np.array([0, 1, -1]), 10)


def test_shot_groups_boundaries() -> None:
    np.testing.assert_array_equal(shot_groups(np.array([150, 101, 100, 50, 20, 19, 0])), [0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(shot_groups(np.array([11, 10, 3]), many=10, few=4), [0, 1, 2])


def test_subset_renumbers_and_keeps_attributes() -> None:
    source = SyntheticShapes(100, 16, 2, 5, 0, 0)
    subset = LongTailSubset(source, 5.0)
    kept = long_tail_indices(source.labels, 5.0)
    assert len(subset) == kept.size
    np.testing.assert_array_equal(subset.labels, source.labels[kept])
    np.testing.assert_array_equal(subset.coarse_labels, source.coarse_labels[kept])
    np.testing.assert_array_equal(subset.class_counts(), long_tail_counts(source.class_counts(), 5.0))
    image, label, index = subset[len(subset) - 1]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(source.load_image(int(kept[-1]))))
    assert (label, index) == (source.labels[kept[-1]], len(subset) - 1)
    assert subset.num_classes == 10 and "long-tail subset (ratio 5)" in subset.describe()


def test_build_long_tails_train_split_only(cifar10_data: ArrayData) -> None:
    data_cfg = DataConfig(source="cifar10", root=str(cifar10_data.root), long_tail_ratio=2.0)
    train, test = build_source(data_cfg, "train"), build_source(data_cfg, "test")
    assert isinstance(train, LongTailSubset)
    np.testing.assert_array_equal(train.labels, cifar10_data.labels["train"][long_tail_indices(train.source.labels, 2)])
    assert len(test) == len(cifar10_data.labels["test"])
