"""Normalisation layers: plain BN, split BN (MoCo's single-worker stand-in for shuffle-BN) and layer norm (CPC v2)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormKind = Literal["plain", "split", "layer"]


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalises num_splits groups of the batch separately.

    Sample ``b`` belongs to group ``b % num_splits``. The running statistics are shared: each
    group updates a copy and the copies are averaged. In eval mode this is ordinary BN.
    """

    def __init__(self, num_features: int, num_splits: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        if num_splits < 1:
            raise ValueError(f"num_splits must be at least 1, got {num_splits}")
        super().__init__(num_features, eps=eps, momentum=momentum)
        self.num_splits = num_splits

    def forward(self, x: Tensor) -> Tensor:
        """Return the normalised input, same shape as ``x`` [B, C, H, W]."""
        if not self.training or self.num_splits == 1:
            return super().forward(x)
        self._check_input_dim(x)
        batch, channels, height, width = x.shape
        splits = self.num_splits
        if batch % splits:
            raise ValueError(f"batch size {batch} is not divisible by num_splits={splits} of SplitBatchNorm2d")
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        # Folding the groups into channels normalises them all in one batch_norm call:
        # [B, C, H, W] -> [B/s, s*C, H, W], where channel j*C + c holds channel c of group j.
        running_mean = self.running_mean.repeat(splits)
        running_var = self.running_var.repeat(splits)
        out = F.batch_norm(
            x.reshape(batch // splits, splits * channels, height, width),
            running_mean,
            running_var,
            self.weight.repeat(splits),
            self.bias.repeat(splits),
            True,
            factor,
            self.eps,
        )
        with torch.no_grad():
            self.running_mean.copy_(running_mean.view(splits, channels).mean(dim=0))
            self.running_var.copy_(running_var.view(splits, channels).mean(dim=0))
        return out.reshape(batch, channels, height, width)

    def extra_repr(self) -> str:
        """Return BN's description plus the number of splits."""
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def layer_norm(num_features: int) -> nn.GroupNorm:
    """Return a layer norm over (C, H, W) of each sample with a per-channel affine: one group of all channels."""
    return nn.GroupNorm(1, num_features)


def norm_layer(kind: NormKind, splits: int = 1) -> Callable[[int], nn.Module]:
    """Return a factory ``num_features -> norm module`` of the given kind (``splits`` only for split BN)."""
    if kind == "plain":
        return nn.BatchNorm2d
    if kind == "layer":
        return layer_norm
    if kind == "split":
        if splits < 1:
            raise ValueError(f"split batch norm needs splits >= 1, got {splits}")
        return functools.partial(SplitBatchNorm2d, num_splits=splits)
    raise ValueError(f"unknown norm kind {kind!r}; expected 'plain', 'split' or 'layer'")


def split_batch_norms(module: nn.Module, splits: int) -> nn.Module:
    """Return ``module`` with every BatchNorm2d replaced in place by a SplitBatchNorm2d of ``splits`` groups.

    For networks built elsewhere (timm): their layers are not made through ``norm_layer``. A network without
    batch norm (a ViT) is returned unchanged. Affine parameters and running statistics carry over. A batch norm
    of another kind (timm's fused ``BatchNormAct2d``) cannot be split: ValueError naming ``model.batch_norm``.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and type(child) not in (nn.BatchNorm2d, SplitBatchNorm2d):
            raise ValueError(
                f"model.batch_norm: split batch norm cannot replace {name} ({type(child).__name__}); "
                "set model.batch_norm=plain (or shuffle, on several workers)"
            )
        if type(child) is nn.BatchNorm2d:
            split = SplitBatchNorm2d(child.num_features, splits, eps=child.eps, momentum=child.momentum)
            split.load_state_dict(child.state_dict())
            setattr(module, name, split)
        else:
            split_batch_norms(child, splits)
    return module
