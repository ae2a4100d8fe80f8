"""SupCon (labels) and SimCLR (no labels): two augmented views through one encoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from pipeline.config import ExperimentConfig, MethodConfig
from pipeline.data.views import MultiView, build_view
from pipeline.losses import supcon
from pipeline.methods import register_method
from pipeline.methods.base import Method, MethodContext, StepInfo
from pipeline.methods.common import build_encoder, resolve_batch_norm


class SupConConfig(MethodConfig):
    """SupCon parameters (official CIFAR recipe)."""

    name: Literal["supcon"] = "supcon"
    temperature: float = Field(0.1, gt=0)
    base_temperature: float = Field(0.07, gt=0)


class SimCLRConfig(MethodConfig):
    """SimCLR parameters (the SupCon repository's SimCLR recipe)."""

    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.5, gt=0)
    base_temperature: float = Field(0.07, gt=0)


@register_method
class SupCon(Method):
    """Supervised contrastive learning over two views of each image."""

    name = "supcon"
    Config = SupConConfig
    uses_labels = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        batch_norm = resolve_batch_norm(context.config.model.batch_norm, context.world_size, False)
        self.encoder = build_encoder(context.config.model, batch_norm)

    @classmethod
    def train_transform(cls, config: ExperimentConfig) -> Callable[[Any], Any]:
        """Return two SupCon views: ``view1`` and ``view2``."""
        view = build_view("supcon", config.data)
        return MultiView({"view1": view, "view2": view})

    @classmethod
    def validate(cls, config: ExperimentConfig, world_size: int) -> None:
        """Reject batch-norm modes this method cannot use."""
        resolve_batch_norm(config.model.batch_norm, world_size, False)

    def eval_backbone(self) -> nn.Module:
        """Return the backbone."""
        return self.encoder.backbone

    def forward(self, views: Any, labels: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the SupCon loss over the two views ``# features [B, 2, D]``."""
        batch = views["view1"].shape[0]
        embeddings = F.normalize(self.encoder(torch.cat([views["view1"], views["view2"]])), dim=1)
        features = embeddings.view(2, batch, -1).transpose(0, 1)
        loss = supcon(
            features,
            labels if self.uses_labels else None,
            temperature=self.params.temperature,
            base_temperature=self.params.base_temperature,
        )
        return {"loss": loss, self.name: loss.detach()}


@register_method
class SimCLR(SupCon):
    """SimCLR: SupCon without labels (positives are the other view of the same image)."""

    name = "simclr"
    Config = SimCLRConfig
    uses_labels = False
