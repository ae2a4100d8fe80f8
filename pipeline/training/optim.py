"""Optimiser construction and per-iteration learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config import OptimConfig


def scaled_lr(config: OptimConfig, global_batch: int) -> float:
    """Return the peak learning rate: ``lr * global_batch / lr_batch_reference`` when scaling is on."""
    if not config.scale_lr:
        return config.lr
    return config.lr * global_batch / config.lr_batch_reference


def lr_schedule(config: OptimConfig, global_batch: int, steps_per_epoch: int, epochs: int) -> np.ndarray:
    """Return the learning rate of every optimiser step: linear warm-up, then cosine or constant ``# [steps]``."""
    total = steps_per_epoch * epochs
    peak = scaled_lr(config, global_batch)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total)
    steps = np.arange(total, dtype=np.float64)
    schedule = np.full(total, peak)
    schedule[:warmup] = peak * (steps[:warmup] + 1) / warmup
    if config.schedule == "cosine" and total > warmup:
        progress = (steps[warmup:] - warmup) / (total - warmup)
        schedule[warmup:] = config.min_lr + (peak - config.min_lr) * 0.5 * (1 + np.cos(math.pi * progress))
    return schedule


def build_optimizer(config: OptimConfig, module: nn.Module) -> torch.optim.Optimizer:
    """Return the configured optimiser over the trainable parameters of ``module``.

    LARS adapts and decays the weight matrices and kernels only: biases and normalisation parameters (every
    parameter of at most one dimension) get plain SGD with momentum and no weight decay, as SimCLR and BYOL do.
    """
    parameters = [p for p in module.parameters() if p.requires_grad]
    if config.name == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.name == "lars":
        adapted = [p for p in parameters if p.ndim > 1]
        excluded = [p for p in parameters if p.ndim <= 1]
        groups = [{"params": adapted}, {"params": excluded, "lars": False, "weight_decay": 0.0}]
        return LARS(
            [group for group in groups if group["params"]],
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            trust_coefficient=config.trust_coefficient,
        )
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017), as SimCLR and BYOL train.

    For each parameter tensor ``p`` of a group with ``lars`` on, its gradient ``g`` becomes
    ``g + weight_decay * p``, scaled by the trust ratio ``trust_coefficient * ||p|| / ||g||`` (1 where either
    norm is 0); then ``buf = momentum * buf + lr * g`` (from ``buf = 0``) and ``p -= buf``: the learning rate
    inside the momentum buffer, as SimCLR's LARS and optax's ``lars`` (BYOL) apply it, which differs from
    ``p -= lr * buf`` while the rate changes (warm-up, cosine). Groups with ``lars`` off (biases and
    normalisation parameters, from ``build_optimizer``) skip both the weight decay and the trust ratio. The
    ratio stays a tensor: no host synchronisation per parameter.
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "trust_coefficient": trust_coefficient,
            "lars": True,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """Return the closure's loss (if given) after one LARS update of every parameter with a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                update = parameter.grad
                if group["lars"]:
                    update = update.add(parameter, alpha=group["weight_decay"])
                    parameter_norm = torch.linalg.vector_norm(parameter)
                    update_norm = torch.linalg.vector_norm(update)
                    usable = (parameter_norm > 0) & (update_norm > 0)
                    ratio = (
                        group["trust_coefficient"]
                        * parameter_norm
                        / update_norm.clamp_min(torch.finfo(update.dtype).tiny)
                    )
                    update = update * torch.where(usable, ratio, torch.ones_like(ratio))
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffer = state["momentum_buffer"]
                buffer.mul_(group["momentum"]).add_(update, alpha=group["lr"])
                parameter.sub_(buffer)
        return loss
