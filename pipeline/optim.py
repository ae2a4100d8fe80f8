"""Optimiser construction and per-iteration learning-rate schedules."""

from __future__ import annotations

import math

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
    """Return the configured optimiser over the trainable parameters of ``module``."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    if config.name == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
