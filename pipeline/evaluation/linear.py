"""Linear probe on fixed features: class-balanced sampling, optional loss re-weighting, SGD or full-batch L-BFGS.

Pure functions of tensors (no files, no MLflow): features in, a trained linear classifier out.
Features are standardised with the training set's per-dimension mean and std (a BatchNorm without
affine parameters in front of the linear layer, as in the MAE probe), so one learning rate suits
backbones of any width and scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Sampling = Literal["uniform", "class_balanced"]


def class_balanced_indices(labels: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``count`` sample indices drawn so that every present class is equally likely per draw ``# [count]``.

    Each draw picks a class uniformly among those with samples, then one of its samples uniformly.
    """
    order = torch.argsort(labels, stable=True)  # sample indices grouped by class
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts  # first position of each class in ``order``
    chosen = torch.randint(len(classes), (count,), generator=generator, device=labels.device)
    within = (torch.rand(count, generator=generator, device=labels.device) * counts[chosen]).long()
    return order[offsets[chosen] + within.clamp_max(counts[chosen] - 1)]


def inverse_frequency_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return per-class loss weights ``N / (C_present · n_c)`` (0 for absent classes) ``# [num_classes]``."""
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float32)
    present = (counts > 0).sum()
    weights = torch.zeros(num_classes, device=labels.device)
    weights[counts > 0] = labels.numel() / (present * counts[counts > 0])
    return weights


@dataclass(frozen=True)
class ProbeSettings:
    """How the linear layer is trained."""

    optimizer: Literal["sgd", "lbfgs"] = "sgd"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    sampling: Sampling = "uniform"
    loss_weighting: Literal["none", "inverse_frequency"] = "none"
    seed: int = 0


class LinearProbe(nn.Module):
    """Standardisation with fixed training statistics, then a linear layer: [N, D] -> [N, C]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.shape[0], num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return class logits of ``features``."""
        return self.linear((features - self.mean) / self.std)


def train_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: ProbeSettings
) -> LinearProbe:
    """Return a linear probe trained on ``features [N, D]`` with ``labels [N]`` (on the features' device)."""
    if features.dim() != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"expected features [N, D] and labels [N], got {tuple(features.shape)}, {tuple(labels.shape)}")
    labelled = labels >= 0
    features, labels = features[labelled].float(), labels[labelled].long()
    if features.shape[0] == 0:
        raise ValueError("the linear probe needs labelled training features; got none")
    torch.manual_seed(settings.seed)
    generator = torch.Generator(device=features.device).manual_seed(settings.seed)
    mean, std = features.mean(dim=0), features.std(dim=0).clamp_min(1e-6)
    probe = LinearProbe(mean, std, num_classes).to(features.device)
    weights = inverse_frequency_weights(labels, num_classes) if settings.loss_weighting != "none" else None
    if settings.optimizer == "lbfgs":
        _fit_lbfgs(probe, features, labels, weights, settings)
    else:
        _fit_sgd(probe, features, labels, weights, settings, generator)
    return probe.eval()


def _fit_sgd(
    probe: LinearProbe,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    settings: ProbeSettings,
    generator: torch.Generator,
) -> None:
    """Train with mini-batch SGD, momentum and a per-step cosine schedule."""
    optimizer = torch.optim.SGD(
        probe.linear.parameters(), lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )
    count = features.shape[0]
    steps_per_epoch = max(1, math.ceil(count / settings.batch_size))
    total = steps_per_epoch * settings.epochs
    step = 0
    for _ in range(settings.epochs):
        if settings.sampling == "class_balanced":
            order = class_balanced_indices(labels, count, generator)
        else:
            order = torch.randperm(count, generator=generator, device=features.device)
        for start in range(0, count, settings.batch_size):
            batch = order[start : start + settings.batch_size]
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(probe(features[batch]), labels[batch], weight=weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1


def _fit_lbfgs(
    probe: LinearProbe,
    features: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    settings: ProbeSettings,
) -> None:
    """Train full-batch with L-BFGS (multinomial logistic regression with an L2 penalty)."""
    optimizer = torch.optim.LBFGS(
        probe.linear.parameters(), lr=1.0, max_iter=settings.epochs, history_size=20, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(probe(features), labels, weight=weights)
        loss = loss + 0.5 * settings.weight_decay * probe.linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
