"""Pure loss functions of docs/methods.md: functions of tensors only, usable on their own."""

from pipeline.losses.contrastive import (
    contrast_accuracy,
    contrast_logits,
    info_nce,
    own_key_cross_entropy,
    soft_cross_entropy,
    soft_info_nce,
    supcon,
)
from pipeline.losses.infomax import dim_infonce, dim_jsd, local_global_scores
from pipeline.losses.longtail import class_positive_count, dscl, pbsd, scl
from pipeline.losses.predictive import cpc_infonce
from pipeline.losses.prototypes import (
    cluster_concentration,
    icsc,
    icsc_selection_probs,
    pcsc,
    pcsc_negative_ids,
    pcsc_selection_probs,
)
from pipeline.losses.soft import (
    ASCL_MODES,
    ascl_byol,
    ascl_targets,
    in_batch_targets,
    neighbour_relations,
    off_diagonal,
    relation_confidence,
    soft_byol,
    soft_targets,
    with_diagonal,
)

__all__ = [
    "ASCL_MODES",
    "ascl_byol",
    "ascl_targets",
    "class_positive_count",
    "cluster_concentration",
    "contrast_accuracy",
    "contrast_logits",
    "cpc_infonce",
    "dim_infonce",
    "dim_jsd",
    "dscl",
    "icsc",
    "icsc_selection_probs",
    "in_batch_targets",
    "info_nce",
    "local_global_scores",
    "neighbour_relations",
    "off_diagonal",
    "own_key_cross_entropy",
    "pbsd",
    "pcsc",
    "pcsc_negative_ids",
    "pcsc_selection_probs",
    "relation_confidence",
    "scl",
    "soft_byol",
    "soft_cross_entropy",
    "soft_info_nce",
    "soft_targets",
    "supcon",
    "with_diagonal",
]
