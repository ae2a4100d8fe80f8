"""A masked (PixelCNN-style) convolutional context network: the context at row r sees only rows <= r."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class CausalConv2d(nn.Conv2d):
    """A k x k convolution padded only above (and at both sides), so output row r reads input rows r-k+1 .. r."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__(channels, channels, kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        """Return the causal convolution of ``x`` [B, C, H, W], same shape."""
        k = self.kernel_size[0]
        return super().forward(F.pad(x, (k // 2, k // 2, k - 1, 0)))


class CausalBlock(nn.Module):
    """A residual block: x + 1x1(ReLU(causal k x k(ReLU(x))))."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = CausalConv2d(channels, kernel_size)
        self.mix = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        """Return the block's output, same shape as ``x``."""
        return x + self.mix(F.relu(self.conv(F.relu(x))))


class CausalContext(nn.Module):
    """Context vectors c[r, c'] of a grid of patch vectors, each a function of the rows <= r only."""

    def __init__(self, in_channels: int, channels: int, num_blocks: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"the context network's kernel size must be odd, got {kernel_size}")
        self.project = nn.Conv2d(in_channels, channels, kernel_size=1)
        self.blocks = nn.Sequential(*(CausalBlock(channels, kernel_size) for _ in range(num_blocks)))

    def forward(self, grid: Tensor) -> Tensor:
        """Return the contexts of a patch-vector grid: [B, D, G, G] -> [B, C, G, G]."""
        return self.blocks(self.project(grid))
