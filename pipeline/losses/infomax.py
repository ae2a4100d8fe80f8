"""Deep InfoMax's local–global objectives (Hjelm et al. 2019): scores of global vectors against local feature maps.

``scores[i, j, p] = Y_i · C_{j,p}``: the global vector of image i against the local feature of image j
at position p. The pair is positive when i = j (every position of the same image) and negative
otherwise (every position of every other image in the batch).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def local_global_scores(global_features: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
    """Return ``[B, B, P]`` scores of ``global_features [B, D]`` against ``local_features [B, D, P]``."""
    if global_features.dim() != 2 or local_features.dim() != 3 or global_features.shape[1] != local_features.shape[1]:
        raise ValueError(
            f"expected global [B, D] and local [B, D, P] features, got {tuple(global_features.shape)} "
            f"and {tuple(local_features.shape)}"
        )
    return torch.einsum("id,jdp->ijp", global_features, local_features)


def _split(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the positive scores ``[B, P]`` and a ``[B, B, 1]`` mask of the negative (other-image) pairs."""
    batch = scores.shape[0]
    if scores.dim() != 3 or scores.shape[1] != batch:
        raise ValueError(f"expected scores [B, B, P], got {tuple(scores.shape)}")
    if batch < 2:
        raise ValueError("local-global objectives need at least 2 images per batch (the negatives are the others)")
    positives = scores.diagonal(dim1=0, dim2=1).T  # [B, P]
    other = ~torch.eye(batch, dtype=torch.bool, device=scores.device)[:, :, None]
    return positives, other


def dim_infonce(scores: torch.Tensor) -> torch.Tensor:
    """Return the InfoNCE loss: for each (image i, position p), its own local feature against every other image's.

    Each row classifies ``s[i, i, p]`` among itself and the ``(B − 1)·P`` scores ``s[i, j≠i, q]``; the
    loss is the mean over i and p.
    """
    positives, other = _split(scores)
    negatives = scores.masked_fill(~other, float("-inf")).flatten(1)  # [B, B*P]
    negative_mass = torch.logsumexp(negatives, dim=1, keepdim=True)  # [B, 1]
    return (torch.logaddexp(positives, negative_mass) - positives).mean()


def dim_jsd(scores: torch.Tensor) -> torch.Tensor:
    """Return minus the Jensen–Shannon MI estimate: E_neg[softplus(s) − log 2] − E_pos[log 2 − softplus(−s)].

    The means run over the positive pairs (i = j, every position) and over the negative pairs (i ≠ j,
    every position); the estimate itself is ``−loss``, at most 2·log 2.
    """
    positives, other = _split(scores)
    negatives = scores.masked_select(other.expand_as(scores))
    log2 = math.log(2.0)
    positive_term = (log2 - F.softplus(-positives)).mean()
    negative_term = (F.softplus(negatives) - log2).mean()
    return negative_term - positive_term


__all__ = ["dim_infonce", "dim_jsd", "local_global_scores"]
