"""Contrastive predictive coding's loss over a grid of patch vectors (van den Oord et al. 2018; Hénaff et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cpc_infonce(targets: Tensor, predictions: Tensor, first_step: int = 1) -> Tensor:
    """Return CPC's InfoNCE: the sum over offsets k of the mean cross-entropy of predicting the patch k rows below.

    ``targets`` [B, G, G, D] are the target vectors of every patch (row, column); ``predictions``
    [B, G, G, K, D] hold at ``[b, r, c, j]`` the prediction of targets[b, r + k, c] for the offset
    k = ``first_step`` + j (rows r >= G - k have no target and are left out). Each prediction is scored
    by dot product against the targets of every patch of the batch, at every position of every image;
    the true one is the positive.
    """
    batch, rows, cols, steps, dim = predictions.shape
    if targets.shape != (batch, rows, cols, dim):
        raise ValueError(f"targets {tuple(targets.shape)} do not match predictions {tuple(predictions.shape)}")
    if first_step < 1 or not first_step + steps - 1 < rows:
        raise ValueError(f"need 1 <= first_step and first_step + steps - 1 < rows, got {first_step}, {steps}, {rows}")
    candidates = targets.reshape(-1, dim)
    positions = torch.arange(batch * rows * cols, device=targets.device).view(batch, rows, cols)
    losses = []
    for j in range(steps):
        k = first_step + j
        queries = predictions[:, : rows - k, :, j].reshape(-1, dim)
        labels = positions[:, k:, :].reshape(-1)
        losses.append(F.cross_entropy(queries @ candidates.T, labels))
    return torch.stack(losses).sum()
