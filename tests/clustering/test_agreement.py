"""NMI and ARI: perfect and permuted partitions, a hand-computed case, chance level, unknown labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.clustering import adjusted_rand_index, normalized_mutual_info


def test_identical_and_relabelled_partitions_score_one() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    for assignments in (labels, np.array([5, 5, 3, 3, 9, 9])):
        assert normalized_mutual_info(assignments, labels) == pytest.approx(1.0)
        assert adjusted_rand_index(assignments, labels) == pytest.approx(1.0)


def test_hand_computed_case() -> None:
    # Clusters {0,1,2} {3,4,5}; classes {0,1} {2,3,4,5}.
    assignments, labels = np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 1])
    # Pairs: same cluster and class: C(2,2) + C(1,2) + C(3,2) = 1 + 0 + 3 = 4; rows 3 + 3 = 6; columns 1 + 6 = 7.
    expected_index = 6 * 7 / 15
    ari = (4 - expected_index) / ((6 + 7) / 2 - expected_index)
    assert adjusted_rand_index(assignments, labels) == pytest.approx(ari)
    p_joint = {(0, 0): 2 / 6, (0, 1): 1 / 6, (1, 1): 3 / 6}
    p_cluster, p_class = {0: 0.5, 1: 0.5}, {0: 2 / 6, 1: 4 / 6}
    mutual = sum(p * math.log(p / (p_cluster[a] * p_class[b])) for (a, b), p in p_joint.items())
    h_cluster = math.log(2)
    h_class = -(2 / 6) * math.log(2 / 6) - (4 / 6) * math.log(4 / 6)
    assert normalized_mutual_info(assignments, labels) == pytest.approx(mutual / ((h_cluster + h_class) / 2))


def test_independent_partitions_score_near_zero_and_unknown_labels_are_ignored() -> None:
    rng = np.random.default_rng(0)
    assignments, labels = rng.integers(0, 10, 20000), rng.integers(0, 10, 20000)
    assert abs(adjusted_rand_index(assignments, labels)) < 0.01
    assert normalized_mutual_info(assignments, labels) < 0.01
    partial = np.array([0, 0, 1, 1, 7])
    assert adjusted_rand_index(partial, np.array([3, 3, 4, 4, -1])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no sample has a known label"):
        normalized_mutual_info(partial, np.full(5, -1))
