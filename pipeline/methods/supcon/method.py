"""SupCon (labels) and SimCLR (no labels) over two views through one encoder; SupCon-S over a single view.

Every worker contrasts the whole global batch (all workers' embeddings and labels), as the official code
under DataParallel does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.losses import supcon
from pipeline.methods.augmentations import SUPCON, local_views
from pipeline.methods.base import Method
from pipeline.methods.common import build_encoder, global_features
from pipeline.methods.context import Batch, MethodContext, StepInfo
from pipeline.methods.factory import register_method
from pipeline.methods.supcon.params import SimCLRConfig, SupConConfig, SupConSConfig


@register_method(SupConConfig)
class SupCon(Method[SupConConfig | SimCLRConfig | SupConSConfig]):
    """Supervised contrastive learning over two views of each image."""

    uses_labels = True
    takes_local_crops = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        self.encoder = build_encoder(context.config.model, context.batch_norm, context.config.data.image_size)

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return two SupCon views, ``view1`` and ``view2``, and any local crops ``local_i``."""
        return {"view1": SUPCON, "view2": SUPCON, **local_views(SUPCON, config.method.local_crops)}

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the backbone."""
        return {"backbone": self.encoder.backbone}

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the SupCon loss over every view of the global batch ``# features [W*B, 2 + local crops, D]``.

        Local crops (multi-crop's common form) are more views of each image: anchors and positives like the two.
        """
        views = batch.views
        embeddings = F.normalize(self.encoder(torch.cat([views["view1"], views["view2"]])), dim=1)
        per_view = [*embeddings.view(2, batch.size, -1)]
        # One pass per local crop: crops of other sides cannot share the two views' batch.
        per_view += [
            F.normalize(self.encoder(views[f"local_{index}"]), dim=1) for index in range(self.params.num_local_crops)
        ]
        features, labels = global_features(torch.stack(per_view, dim=1), batch.labels if self.uses_labels else None)
        loss = supcon(
            features,
            labels,
            temperature=self.params.temperature,
            base_temperature=self.params.base_temperature,
        )
        return {"loss": loss, self.name: loss.detach()}


@register_method(SimCLRConfig)
class SimCLR(SupCon):
    """SimCLR: SupCon without labels (positives are the other view of the same image)."""

    uses_labels = False


@register_method(SupConSConfig)
class SupConS(SupCon):
    """SupCon-S (SelfCon's baseline): one augmented view; anchors whose class has no other image are dropped."""

    takes_local_crops = False  # a single view by design

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return one SupCon view."""
        return {"view1": SUPCON}

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return SupCon over a single view of the global batch ``# features [W*B, 1, D]``."""
        embeddings = F.normalize(self.encoder(batch.views["view1"]), dim=1)
        features, labels = global_features(embeddings[:, None], batch.labels)
        loss = supcon(
            features,
            labels,
            self.params.temperature,
            self.params.base_temperature,
            drop_anchors_without_positives=True,
        )
        return {"loss": loss, self.name: loss.detach()}
