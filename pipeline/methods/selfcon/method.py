"""SelfCon: contrast a network's backbone output with its sub-network exits (Bae et al., AAAI 2023).

Every branch (each exit, then the backbone) has its own projection head; their embeddings are
stacked as views ``[B, E, D]`` and fed to ``supcon``. SelfCon-S uses one augmented view per image;
SelfCon-M two, concatenated along the batch (``[2B, E, D]``, labels repeated). The unlabelled variants
(SU, MU) pass no labels, so only the other branches of the same image are positives (in MU the other
augmented view is not). Its single-view baseline, SupCon-S, is ``supcon_s`` in ``pipeline.methods.supcon``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.losses import supcon
from pipeline.methods.augmentations import SUPCON
from pipeline.methods.base import Method
from pipeline.methods.common import global_features
from pipeline.methods.context import Batch, MethodContext, StepInfo
from pipeline.methods.factory import register_method
from pipeline.methods.selfcon.params import SelfConConfig
from pipeline.models.backbones import build_backbone
from pipeline.models.multi_exit import MultiExitNetwork


class BranchFeatures(nn.Module):
    """The pooled features of one branch of a multi-exit network (what the evaluation stage probes)."""

    def __init__(self, network: MultiExitNetwork, index: int) -> None:
        super().__init__()
        self.network = network
        self.index = index
        self.feature_dim = network.backbone.feature_dim  # every branch's pooled features have the backbone's width

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the branch's pooled features ``[B, feature_dim]``."""
        return self.network.features(images)[self.index]


def selfcon_features(network: MultiExitNetwork, views: list[torch.Tensor]) -> torch.Tensor:
    """Return normalised embeddings of every branch for the views concatenated along the batch ``# [V*B, E, D]``."""
    embeddings = network(torch.cat(views))  # E tensors of [V*B, D], exits first, backbone last
    return torch.stack([F.normalize(embedding, dim=1) for embedding in embeddings], dim=1)


@register_method(SelfConConfig)
class SelfCon(Method[SelfConConfig]):
    """SelfCon-S / -M (labels) and SelfCon-SU / -MU (no labels) over a multi-exit network."""

    reads_feature_maps = "branches its exits off intermediate stages (method.exits)"

    uses_labels = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        model = context.config.model
        backbone = build_backbone(model, norm="split" if context.batch_norm == "split" else "plain")
        self.network = MultiExitNetwork(
            backbone, self.params.exits, self.params.exit_type, model.proj_hidden_dim, model.proj_dim
        )

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return one SupCon view (S, SU) or two (M, MU)."""
        if config.method.variant in ("M", "MU"):
            return {"view1": SUPCON, "view2": SUPCON}
        return {"view1": SUPCON}

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the backbone and each exit's sub-network, by name (``exit_layer2``, ...)."""
        last = self.network.num_branches - 1
        branches = {"backbone": BranchFeatures(self.network, last)}
        branches.update({f"exit_{name}": BranchFeatures(self.network, i) for i, name in enumerate(self.params.exits)})
        return branches

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the SupCon loss over the branches of one or two views of the global batch ``# [W*V*B, E, D]``."""
        views = [batch.views[name] for name in sorted(batch.views)]
        labelled = self.params.variant in ("S", "M")
        features, labels = global_features(
            selfcon_features(self.network, views), batch.labels.repeat(len(views)) if labelled else None
        )
        loss = supcon(features, labels, self.params.temperature, self.params.base_temperature)
        return {"loss": loss, "selfcon": loss.detach()}
