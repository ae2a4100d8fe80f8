"""Building blocks shared by methods: encoders and momentum copies."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.backbones import ResNet, TimmBackbone, build_backbone
from pipeline.models.distributed import all_gather_with_grad, concat_all_gather
from pipeline.models.heads import ProjectionHead


class Encoder(nn.Module):
    """Backbone followed by a projection head; returns unnormalised embeddings."""

    def __init__(self, backbone: ResNet | TimmBackbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return the head's embedding of ``images`` ``# [B, proj_dim]``."""
        return self.head(self.backbone(images))


def build_encoder(model_config: ModelConfig, batch_norm: str, image_size: int | None = None) -> Encoder:
    """Return a backbone (for ``image_size`` px inputs) plus MoCo v2 projection head (d -> d -> proj_dim)."""
    backbone = build_backbone(model_config, norm="split" if batch_norm == "split" else "plain", image_size=image_size)
    hidden = model_config.proj_hidden_dim or backbone.feature_dim
    return Encoder(backbone, ProjectionHead(backbone.feature_dim, hidden, model_config.proj_dim))


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """Return ``tensor`` in float32 when autocast left it in half precision, unchanged in float32 or float64."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def global_features(features: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return every worker's ``features [B, ...]`` (differentiable) and ``labels [B]`` as the global batch.

    The in-batch contrast then sees the whole global batch on every worker, as the official code's
    DataParallel does; each worker's loss is the global loss and its gradient reaches each worker's rows.
    """
    return all_gather_with_grad(features), None if labels is None else concat_all_gather(labels)


def momentum_copy(online: nn.Module) -> nn.Module:
    """Return a frozen copy of ``online`` to be updated by exponential moving average."""
    target = copy.deepcopy(online)
    for parameter in target.parameters():
        parameter.requires_grad_(False)
    return target


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """Move ``target``'s parameters towards ``online``'s: t = m * t + (1 - m) * o (in place)."""
    target_params = list(target.parameters())
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """Return BYOL's cosine-increasing momentum: 1 - (1 - base) * (cos(pi * step / total) + 1) / 2."""
    progress = min(step / max(total_steps, 1), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def scheduled_momentum(base: float, schedule: str, step: int, total_steps: int) -> float:
    """Return the momentum encoder's momentum at ``step``: ``base`` (constant) or BYOL's cosine increase to 1."""
    return cosine_momentum(base, step, total_steps) if schedule == "cosine" else base
