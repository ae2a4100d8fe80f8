"""Per-level hierarchy statistics: counts, concentration, agreement with classes and superclasses."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.clustering import Hierarchy, Level, adjusted_rand_index, normalized_mutual_info
from pipeline.clustering.statistics import hierarchy_statistics, hierarchy_tree


def two_levels() -> Hierarchy:
    """Return a hand-made 4-2 hierarchy over 8 images (cluster 3 of level 0 is empty)."""
    lower = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    parents = np.array([0, 0, 1, 1])
    centroids = np.eye(4, 3, dtype=np.float32)
    return Hierarchy(
        (
            Level(centroids, np.array([0.1, 0.2, 0.3, 0.2], dtype=np.float32), lower, parents),
            Level(centroids[:2], np.array([0.2, 0.2], dtype=np.float32), parents[lower], None),
        ),
        "cpu",
        0.5,
    )


def test_counts_concentration_and_agreement_per_level() -> None:
    hierarchy = two_levels()
    labels = np.array([0, 0, 1, 1, 2, 2, 2, -1])
    coarse = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    statistics = hierarchy_statistics(hierarchy, labels, coarse)
    assert statistics["level0/clusters"] == 4 and statistics["level0/non_empty"] == 3
    assert statistics["level0/mean_concentration"] == pytest.approx(0.2)
    for index, level in enumerate(hierarchy.levels):
        assert statistics[f"level{index}/nmi_class"] == pytest.approx(normalized_mutual_info(level.assignments, labels))
        assert statistics[f"level{index}/ari_superclass"] == pytest.approx(
            adjusted_rand_index(level.assignments, coarse)
        )
    assert statistics["level0/nmi_class"] == pytest.approx(1.0)  # the labelled images are split exactly by class
    assert statistics["level1/ari_superclass"] == pytest.approx(1.0)
    assert all(isinstance(value, float) for value in statistics.values())


def test_agreement_is_left_out_without_known_labels() -> None:
    statistics = hierarchy_statistics(two_levels(), np.full(8, -1), None)
    assert not [key for key in statistics if "nmi" in key or "ari" in key]
    assert statistics["level1/non_empty"] == 2


def test_the_tree_gives_each_prototype_its_size_majority_class_and_parent() -> None:
    # Level 0: cluster 0 holds images 0, 1 (class 0) and 7 (unknown); cluster 1 images 2, 3 (class 1); cluster 2
    # images 4, 5 (class 2) and 6 (class 1); cluster 3 none. Level 1: cluster 0 holds clusters 0 and 1 of level 0,
    # two images of class 0 and two of class 1: a tie, which goes to the smaller class.
    labels = np.array([0, 0, 1, 1, 2, 2, 1, -1])

    tree = hierarchy_tree(two_levels(), labels)

    assert tree == [
        {"sizes": [3, 2, 3, 0], "majority": [0, 1, 2, -1], "parents": [0, 0, 1, 1]},
        {"sizes": [5, 3], "majority": [0, 2]},
    ]
    assert [level["majority"] for level in hierarchy_tree(two_levels())] == [[-1] * 4, [-1] * 2]
