"""CPC v2 (Hénaff et al. 2020): predict the vectors of patches further down an image from a causal context.

Each image is cut into a grid of half-overlapping patches (7x7 by default), each encoded on its own by
the backbone (layer norm in place of batch norm by default, as CPC v2) into a pooled vector z[r, c].
A masked convolutional context network gives c[r, c] from rows <= r. As in the paper's pseudo-code,
the targets are z through a linear map to ``target_dim`` (64), and for each offset k from
``skip_steps`` + 1 to ``steps`` (only 3 by default: rows 1 and 2 below overlap the context's own
patches) a linear map of c[r, c], scaled by ``emb_scale`` (0.1), predicts the target at (r + k, c).
The InfoNCE loss scores each prediction against the targets of every patch of the global batch (all
workers' images), summed over offsets. Other directions (``up``, ``right``, ``left``) orient the grid so that "ahead"
is downwards, each with its own context network, target map and predictors, losses averaged. The
evaluated features are the mean patch vector over the grid.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import PatchGrid, ViewRecipe, grid_patch_size
from pipeline.losses import cpc_infonce
from pipeline.methods.augmentations import cpc_view
from pipeline.methods.base import Method
from pipeline.methods.common import full_precision
from pipeline.methods.context import Batch, MethodContext, StepInfo
from pipeline.methods.cpc.params import CpcConfig
from pipeline.methods.factory import register_method
from pipeline.models.backbones import build_backbone
from pipeline.models.causal import CausalContext
from pipeline.models.distributed import all_gather_with_grad
from pipeline.models.patch_grid import PatchGridEncoder


def orient(vectors: Tensor, direction: str) -> Tensor:
    """Return the grid [B, G, G, D] turned so that ``direction`` points down the rows."""
    if direction == "down":
        return vectors
    if direction == "up":
        return vectors.flip(1)
    if direction == "right":
        return vectors.transpose(1, 2)
    if direction == "left":
        return vectors.transpose(1, 2).flip(1)
    raise ValueError(f"unknown direction {direction!r}; expected down, up, right or left")


@register_method(CpcConfig)
class Cpc(Method[CpcConfig]):
    """CPC v2: patch vectors, a causal context network and linear k-step predictors under InfoNCE."""

    reads_feature_maps = "encodes each patch with the ResNet's stages and its own normalisation (method.norm)"

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        params = self.params
        if params.norm == "layer":
            norm = "layer"
        else:
            norm = "split" if context.batch_norm == "split" else "plain"
        backbone = build_backbone(context.config.model, norm=norm)
        self.encoder = PatchGridEncoder(backbone, params.grid)
        dim = backbone.feature_dim
        channels = params.context_dim or dim
        self.target_dim = params.target_dim or dim
        self.offsets = params.steps - params.skip_steps
        directions = params.directions
        self.contexts = nn.ModuleDict({d: CausalContext(dim, channels, params.context_blocks) for d in directions})
        self.targets = nn.ModuleDict(
            {d: nn.Linear(dim, self.target_dim) if params.target_dim else nn.Identity() for d in directions}
        )
        self.predictors = nn.ModuleDict({d: nn.Linear(channels, self.offsets * self.target_dim) for d in directions})

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return one view, ``grid``: the image's patches ``[G*G, 3, P, P]``, each augmented on its own."""
        params = config.method
        grid = PatchGrid(params.grid, params.patch_crop_scale, params.patch_flip, params.channel_drop)
        return {"grid": cpc_view(grid)}

    @classmethod
    def validate(cls, config: ExperimentConfig, world_size: int) -> None:
        """Raise ValueError naming the key if the image size does not fit the grid or batch-norm settings are moot."""
        super().validate(config, world_size)
        try:
            grid_patch_size(config.data.image_size, config.method.grid)
        except ValueError as exc:
            raise ValueError(
                f"method.grid = {config.method.grid} does not fit data.image_size = {config.data.image_size}: {exc}"
            ) from None
        if config.method.norm == "layer" and config.model.batch_norm not in ("auto", "plain"):
            raise ValueError(
                f"model.batch_norm = {config.model.batch_norm!r} has no batch norm to act on with method.norm = "
                "'layer'; set method.norm = 'batch' or leave model.batch_norm at auto"
            )

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the patch-grid encoder: the mean patch vector of the evaluation view's grid."""
        return {"backbone": self.encoder}

    def compiled_networks(self) -> list[nn.Module]:
        """Return the patch backbone and each direction's networks (``patch_vectors`` calls the backbone)."""
        others = [network for network in super().compiled_networks() if network is not self.encoder]
        return [self.encoder.backbone, *others]

    def predict(self, vectors: Tensor, direction: str) -> tuple[Tensor, Tensor]:
        """Return the oriented targets [B, G, G, T] and predictions [B, G, G, K, T] of one direction.

        ``predictions[:, r, c, j]`` predicts the target ``skip_steps + 1 + j`` rows below (r, c).
        """
        oriented = orient(vectors, direction)
        contexts = self.contexts[direction](oriented.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        predictions = self.predictors[direction](contexts) * self.params.emb_scale
        return self.targets[direction](oriented), predictions.unflatten(-1, (self.offsets, self.target_dim))

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """Return the InfoNCE loss (summed over offsets) averaged over the directions."""
        vectors = self.encoder.patch_vectors(batch.views["grid"])
        # This worker's predictions are scored against the targets of every patch of the global batch (gathered
        # with gradient); the mean over workers is the loss of one worker holding the whole batch.
        pairs = [self.predict(vectors, direction) for direction in self.params.directions]
        first, first_image = self.params.skip_steps + 1, self.context.rank * vectors.shape[0]
        # Every prediction is scored against W*B*G*G targets: the logits and softmax run in float32.
        with torch.autocast(vectors.device.type, enabled=False):
            losses = [
                cpc_infonce(all_gather_with_grad(full_precision(target)), full_precision(guess), first, first_image)
                for target, guess in pairs
            ]
            loss = torch.stack(losses).mean()
        return {"loss": loss, "cpc": loss.detach()}
