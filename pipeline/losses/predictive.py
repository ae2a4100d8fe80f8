"""Contrastive predictive coding's loss over a grid of patch vectors (van den Oord et al. 2018; Hénaff et al. 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cpc_infonce(targets: Tensor, predictions: Tensor, first_step: int = 1, first_image: int = 0) -> Tensor:
    """Return CPC's InfoNCE: the sum over offsets k of the mean cross-entropy of predicting the patch k rows below.

    ``targets`` [N, G, G, D] are the target vectors of every patch (row, column) of N images;
    ``predictions`` [B, G, G, K, D] (B <= N) belong to images ``first_image`` .. ``first_image + B - 1``
    of them and hold at ``[b, r, c, j]`` the prediction of their patch k rows below, for the offset
    k = ``first_step`` + j (rows r >= G - k have no target and are left out). Each prediction is scored
    by dot product against the targets of every patch of all N images; the true one is the positive.
    A worker passes the global batch's targets and its own images' predictions (``first_image`` = its
    first row in the global batch).
    """
    batch, rows, cols, steps, dim = predictions.shape
    if targets.shape[1:] != (rows, cols, dim) or not 0 <= first_image <= targets.shape[0] - batch:
        raise ValueError(
            f"targets {tuple(targets.shape)} do not match predictions {tuple(predictions.shape)} "
            f"from image {first_image}"
        )
    if first_step < 1 or not first_step + steps - 1 < rows:
        raise ValueError(f"need 1 <= first_step and first_step + steps - 1 < rows, got {first_step}, {steps}, {rows}")
    candidates = targets.reshape(-1, dim)
    positions = torch.arange(targets.shape[0] * rows * cols, device=targets.device).view(-1, rows, cols)
    positions = positions[first_image : first_image + batch]
    losses = []
    for j in range(steps):
        k = first_step + j
        queries = predictions[:, : rows - k, :, j].reshape(-1, dim)
        labels = positions[:, k:, :].reshape(-1)
        losses.append(F.cross_entropy(queries @ candidates.T, labels))
    return torch.stack(losses).sum()
