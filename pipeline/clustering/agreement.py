"""How well a clustering matches known labels: normalised mutual information and the adjusted Rand index."""

from __future__ import annotations

import numpy as np


def _contingency(assignments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the ``[clusters, classes]`` count table of the samples with a known label (>= 0)."""
    assignments, labels = np.asarray(assignments), np.asarray(labels)
    if assignments.shape != labels.shape or assignments.ndim != 1:
        raise ValueError(f"expected assignments and labels of equal shape [n], got {assignments.shape} {labels.shape}")
    known = labels >= 0
    _, cluster_ids = np.unique(assignments[known], return_inverse=True)
    _, class_ids = np.unique(labels[known], return_inverse=True)
    table = np.zeros((cluster_ids.max(initial=-1) + 1, class_ids.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (cluster_ids, class_ids), 1)
    return table


def _entropy(counts: np.ndarray) -> float:
    """Return the entropy (nats) of the distribution given by ``counts``."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_info(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Return NMI with the arithmetic-mean normalisation (scikit-learn's default), over samples with labels >= 0."""
    table = _contingency(assignments, labels)
    total = table.sum()
    if total == 0:
        raise ValueError("no sample has a known label (all labels are -1)")
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    h_clusters, h_classes = _entropy(rows), _entropy(cols)
    if h_clusters == 0 and h_classes == 0:
        return 1.0
    nonzero = table > 0
    joint = table[nonzero] / total
    outer = (rows[:, None] * cols[None, :])[nonzero] / total**2
    mutual = float((joint * np.log(joint / outer)).sum())
    return mutual / ((h_clusters + h_classes) / 2)


def adjusted_rand_index(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Return the adjusted Rand index over samples with labels >= 0 (1 for identical partitions, about 0 at chance)."""
    table = _contingency(assignments, labels)
    total = table.sum()
    if total == 0:
        raise ValueError("no sample has a known label (all labels are -1)")

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) // 2).sum())

    index = pairs(table)
    expected_rows, expected_cols = pairs(table.sum(axis=1)), pairs(table.sum(axis=0))
    expected = expected_rows * expected_cols / (total * (total - 1) / 2) if total > 1 else 0.0
    maximum = (expected_rows + expected_cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)
