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
