"""A backbone applied to a grid of half-overlapping patches: the patch vectors and their mean (CPC's encoder)."""

from __future__ import annotations

from torch import Tensor, nn

from pipeline.data.recipes import grid_patch_size
from pipeline.models.backbones import ResNet


def cut_grid(images: Tensor, grid: int) -> Tensor:
    """Return the ``grid`` x ``grid`` half-overlapping patches of square images: [B, 3, S, S] -> [B, G*G, 3, P, P]."""
    batch, channels, height, width = images.shape
    if height != width:
        raise ValueError(f"a patch grid needs square images, got {height}x{width}")
    side = grid_patch_size(height, grid)
    # unfold gives [B, C, G, G, P, P] views (no copy) with rows first, matching the data view's order.
    patches = images.unfold(2, side, side // 2).unfold(3, side, side // 2)
    return patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, grid * grid, channels, side, side)


class PatchGridEncoder(nn.Module):
    """Encode every patch of a grid independently with ``backbone``; the evaluation features are their mean."""

    def __init__(self, backbone: ResNet, grid: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.grid = grid
        self.feature_dim: int = backbone.feature_dim

    def patch_vectors(self, patches: Tensor) -> Tensor:
        """Return the pooled backbone vector of every patch: [B, G*G, 3, P, P] -> [B, G, G, D]."""
        batch = patches.shape[0]
        vectors = self.backbone(patches.flatten(0, 1))
        return vectors.view(batch, self.grid, self.grid, -1)

    def forward(self, images: Tensor) -> Tensor:
        """Return the mean patch vector over the deterministic grid of whole images: [B, 3, S, S] -> [B, D]."""
        return self.patch_vectors(cut_grid(images, self.grid)).mean(dim=(1, 2))
