"""Contrastive predictive coding's loss over a grid of patch vectors (van den Oord et al. 2018; Hénaff et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cpc_infonce(vectors: Tensor, predictions: Tensor) -> Tensor:
    """Return CPC's InfoNCE: the mean over steps k of the mean cross-entropy of predicting the patch k rows below.

    ``vectors`` [B, G, G, D] are the patch vectors z[b, r, c]; ``predictions`` [B, G, G, K, D] hold at
    ``[b, r, c, k - 1]`` the prediction of z[b, r + k, c] (rows r >= G - k have no target and are left
    out). Each prediction is scored by dot product against every patch vector of the batch, at every
    position of every image; the true one is the positive.
    """
    batch, rows, cols, steps, dim = predictions.shape
    if vectors.shape != (batch, rows, cols, dim):
        raise ValueError(f"vectors {tuple(vectors.shape)} do not match predictions {tuple(predictions.shape)}")
    if not 1 <= steps < rows:
        raise ValueError(f"need 1 <= steps < rows, got {steps} steps for {rows} rows")
    candidates = vectors.reshape(-1, dim)
    positions = torch.arange(batch * rows * cols, device=vectors.device).view(batch, rows, cols)
    losses = []
    for k in range(1, steps + 1):
        queries = predictions[:, : rows - k, :, k - 1].reshape(-1, dim)
        targets = positions[:, k:, :].reshape(-1)
        losses.append(F.cross_entropy(queries @ candidates.T, targets))
    return torch.stack(losses).mean()
