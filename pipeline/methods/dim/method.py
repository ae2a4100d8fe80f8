"""Deep InfoMax, local–global (Hjelm et al. 2019): the global vector of an image against its local feature map.

The global vector Y is the backbone's pooled output through an MLP; the local features are one
stage's map through 1×1 convolutions to the same width. Every position of the same image is a
positive of Y, every position of every other image of the global batch (all workers' images) a negative; the estimator
is InfoNCE (default, as in the later DIM/AMDIM work) or the paper's Jensen–Shannon form. With
``two_view`` (in the spirit of AMDIM) the global vector of one augmented view is scored against the
local map of the other view, both ways, and the two losses averaged.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.losses import dim_infonce, dim_jsd, local_global_scores
from pipeline.methods.augmentations import ASCL_WEAK
from pipeline.methods.base import Method
from pipeline.methods.common import full_precision
from pipeline.methods.context import Batch, MethodContext, StepInfo
from pipeline.methods.dim.params import DimConfig
from pipeline.methods.factory import register_method
from pipeline.models.backbones import build_backbone, global_avg_pool
from pipeline.models.distributed import all_gather_with_grad
from pipeline.models.heads import ProjectionHead

ESTIMATORS = {"infonce": dim_infonce, "jsd": dim_jsd}


class LocalEncoder(nn.Sequential):
    """1×1 convolutions from a stage's channels to the global vector's width: [B, C, H, W] -> [B, D, H, W]."""

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_channels, out_channels, kernel_size=1),
        )


@register_method(DimConfig)
class Dim(Method[DimConfig]):
    """Deep InfoMax: local–global mutual information between a pooled vector and a stage's feature map."""

    reads_feature_maps = "contrasts local features from a stage's feature map (method.local_stage)"

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        model = context.config.model
        self.backbone = build_backbone(model, norm="split" if context.batch_norm == "split" else "plain")
        hidden = model.proj_hidden_dim or self.backbone.feature_dim
        self.global_head = ProjectionHead(self.backbone.feature_dim, hidden, model.proj_dim)
        channels = self.backbone.stage_channels[self.params.local_stage]
        self.local_head = LocalEncoder(channels, self.params.local_hidden_dim or channels, model.proj_dim)

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return one crop-and-flip view (``view``), and a second one (``other``) in two-view mode."""
        names = ("view", "other") if config.method.two_view else ("view",)
        return {name: ASCL_WEAK for name in names}

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the backbone."""
        return {"backbone": self.backbone}

    def compiled_networks(self) -> list[nn.Module]:
        """Return the backbone's stages and both heads: ``encode`` reaches the backbone through ``forward_stages``."""
        return [*self.backbone.stage_modules(), self.global_head, self.local_head]

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the global vectors ``[B, D]`` and the local features ``[B, D, P]`` of ``images``."""
        maps = self.backbone.forward_stages(images)
        global_features = self.global_head(global_avg_pool(maps[self.backbone.stage_names[-1]]))
        local_features = self.local_head(maps[self.params.local_stage]).flatten(2)
        return global_features, local_features

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the local–global loss (and, in two-view mode, averaged over both directions)."""
        estimator = ESTIMATORS[self.params.estimator]
        # The global batch's vectors and maps: every worker scores all images against all images.
        encoded = [
            tuple(all_gather_with_grad(full_precision(part)) for part in self.encode(batch.views[name]))
            for name in self.views(self.context.config)
        ]
        # [W*B, W*B, P] score tensors: softplus and log-sum-exp over thousands of entries run in float32.
        with torch.autocast(encoded[0][0].device.type, enabled=False):
            pairs = [(0, 0)] if len(encoded) == 1 else [(0, 1), (1, 0)]
            losses = [estimator(local_global_scores(encoded[glob][0], encoded[local][1])) for glob, local in pairs]
            loss = torch.stack(losses).mean()
        return {"loss": loss, f"dim_{self.params.estimator}": loss.detach()}
