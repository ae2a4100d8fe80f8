"""What a hierarchy says about the data: per-level cluster counts, concentration and agreement with known labels."""

from __future__ import annotations

import numpy as np

from pipeline.clustering.agreement import adjusted_rand_index, normalized_mutual_info
from pipeline.clustering.hierarchy import Hierarchy


def hierarchy_statistics(
    hierarchy: Hierarchy, labels: np.ndarray | None = None, coarse_labels: np.ndarray | None = None
) -> dict[str, float]:
    """Return ``level{l}/...`` figures: clusters, non-empty clusters, mean φ and, where labels are known, NMI and ARI.

    ``labels`` (classes) and ``coarse_labels`` (superclasses) are per image, -1 where unknown; agreement
    is measured over the images with a known label only, and left out when there are none.
    """
    references = {"class": labels, "superclass": coarse_labels}
    statistics: dict[str, float] = {}
    for index, level in enumerate(hierarchy.levels):
        prefix = f"level{index}"
        statistics[f"{prefix}/clusters"] = float(level.size)
        statistics[f"{prefix}/non_empty"] = float(level.non_empty())
        statistics[f"{prefix}/mean_concentration"] = float(np.mean(level.concentration))
        for name, reference in references.items():
            if reference is None or not bool((np.asarray(reference) >= 0).any()):
                continue
            statistics[f"{prefix}/nmi_{name}"] = normalized_mutual_info(level.assignments, reference)
            statistics[f"{prefix}/ari_{name}"] = float(adjusted_rand_index(level.assignments, reference))
    return statistics


def hierarchy_tree(hierarchy: Hierarchy, labels: np.ndarray | None = None) -> list[dict[str, list[int]]]:
    """Return, finest level first, each prototype's image count, majority class (-1: none known) and parent.

    ``parents`` indexes the next level up (the top level has none); the majority is over the images whose
    class is known (``labels`` >= 0), the smallest class index on a tie.
    """
    known = None if labels is None else np.asarray(labels) >= 0
    tree = []
    for level in hierarchy.levels:
        sizes = np.bincount(level.assignments, minlength=level.size)
        majority = np.full(level.size, -1, dtype=np.int64)
        if known is not None and known.any():
            classes = int(np.asarray(labels)[known].max()) + 1
            pairs = level.assignments[known].astype(np.int64) * classes + np.asarray(labels)[known]
            counts = np.bincount(pairs, minlength=level.size * classes).reshape(level.size, classes)
            majority = np.where(counts.sum(axis=1) > 0, counts.argmax(axis=1), -1)
        entry = {"sizes": sizes.tolist(), "majority": majority.tolist()}
        if level.parents is not None:
            entry["parents"] = np.asarray(level.parents).tolist()
        tree.append(entry)
    return tree
