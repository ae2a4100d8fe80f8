"""Instance-discrimination losses: MoCo InfoNCE (hard or soft targets) against a queue, and SupCon / SimCLR."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def contrast_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return MoCo's logits ``[q·k, q·queueᵀ] / T`` ``# [B, 1+K]``: column 0 is each query's own key.

    ``q`` and ``k`` are ``[B, D]``, ``queue`` is ``[K, D]``; all are expected L2-normalised by the
    caller. Nothing is detached here: the caller decides where gradient flows (MoCo passes keys
    computed under no-grad and the queue is a buffer).
    """
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(f"expected q and k of equal shape [B, D], got q {tuple(q.shape)} k {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"expected queue [K, D] with D = {q.shape[1]}, got {tuple(queue.shape)}")
    positive = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    negatives = q @ queue.T  # [B, K]
    return torch.cat([positive, negatives], dim=1) / temperature


def own_key_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy of ``logits [B, 1+K]`` with target column 0 (InfoNCE from its logits)."""
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return ``mean_i −Σ_j targets_ij · log_softmax(logits)_ij`` for finite ``logits`` and ``targets`` ``[B, C]``."""
    if targets.shape != logits.shape:
        raise ValueError(f"targets {tuple(targets.shape)} must have the shape of the logits {tuple(logits.shape)}")
    # −Σ t·(z − lse(z)) = lse(z)·Σ t − Σ t·z: two row reductions, no [B, C] log-probabilities kept for backward.
    log_normaliser = torch.logsumexp(logits, dim=1)
    return (log_normaliser * targets.sum(dim=1) - torch.einsum("ij,ij->i", targets, logits)).mean()


def contrast_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Return the fraction of rows of ``logits [B, 1+K]`` whose largest entry is column 0 (the own key)."""
    return (logits.argmax(dim=1) == 0).to(logits.dtype).mean()


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return the mean MoCo InfoNCE loss: cross-entropy of ``[q·k, q·queueᵀ] / T`` with target column 0."""
    return own_key_cross_entropy(contrast_logits(q, k, queue, temperature))


def soft_info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Return ``mean_i −Σ_j targets_ij · log_softmax([q·k, q·queueᵀ] / T)_ij`` (ASCL's loss; targets ``[B, 1+K]``).

    ``targets`` are used as given (the caller builds them without gradient, e.g. with ``ascl_targets``);
    a one-hot column 0 makes this exactly ``info_nce``.
    """
    return soft_cross_entropy(contrast_logits(q, k, queue, temperature), targets)


def supcon(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    anchor_views: Sequence[int] | None = None,
    drop_anchors_without_positives: bool = False,
) -> torch.Tensor:
    """Return the mean SupCon loss over ``features [B, V, D]`` (SimCLR's NT-Xent when ``labels`` is None).

    The contrast set stacks the views view-major (all samples of view 0, then view 1, ...). Anchors
    are every contrast row, or only the rows of the views listed in ``anchor_views``. Positives of
    an anchor share its label (without labels: are the other views of the same sample), the anchor
    itself excluded; the softmax denominator holds every non-self entry. Per-anchor loss is
    ``-(T / T_base)`` times the mean log-probability of its positives. An anchor without positives
    contributes 0 and still counts in the mean unless ``drop_anchors_without_positives`` is set.
    """
    if features.dim() != 3:
        raise ValueError(f"supcon expects features [B, V, D], got shape {tuple(features.shape)}")
    batch, views, _ = features.shape
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != batch):
        raise ValueError(f"supcon expects labels [B] with B = {batch}, got shape {tuple(labels.shape)}")
    anchor_view_list = list(range(views)) if anchor_views is None else [int(view) for view in anchor_views]
    if not anchor_view_list or any(view < 0 or view >= views for view in anchor_view_list):
        raise ValueError(
            f"supcon anchor_views must be a non-empty list of view indices in [0, {views}), got {anchor_views}"
        )

    if views * batch == 1:
        # A lone entry has nothing to contrast with: it is an anchor without positives (loss 0), and the
        # general path would take the log of an empty denominator.
        return features.sum() * 0.0

    device = features.device
    contrast = features.transpose(0, 1).reshape(views * batch, -1)  # [V*B, D], view-major
    # Without labels each sample is its own class, so "same label" means "other view of the same sample".
    sample_labels = torch.arange(batch, device=device) if labels is None else labels
    contrast_labels = sample_labels.repeat(views)  # [V*B]
    samples = torch.arange(batch, device=device)
    # Offsets are applied per view with Python ints so no index list is copied from the host each step.
    anchor_index = torch.cat([samples + view * batch for view in anchor_view_list])  # [A], A = len(anchor_views)*B
    anchors = contrast[anchor_index]  # [A, D]

    contrast_index = torch.arange(views * batch, device=device)
    self_mask = anchor_index[:, None] == contrast_index[None, :]  # [A, V*B]
    positive_mask = (contrast_labels[anchor_index][:, None] == contrast_labels[None, :]) & ~self_mask  # [A, V*B]

    logits = (anchors @ contrast.T) / temperature  # [A, V*B]
    # Masking self with -inf before the exp keeps the self logit out of the max, the sum and the gradient.
    non_self_logits = logits.masked_fill(self_mask, float("-inf"))
    shifted = non_self_logits - non_self_logits.amax(dim=1, keepdim=True).detach()
    log_prob = shifted - shifted.exp().sum(dim=1, keepdim=True).log()  # [A, V*B]; -inf on self only
    positive_log_prob = log_prob.masked_fill(~positive_mask, 0.0).sum(dim=1)  # [A]
    positive_count = positive_mask.sum(dim=1).to(features.dtype)  # [A]
    anchor_loss = -(temperature / base_temperature) * positive_log_prob / positive_count.clamp_min(1.0)  # [A]

    if drop_anchors_without_positives:
        counted = (positive_count > 0).to(features.dtype).sum()
        return anchor_loss.sum() / counted.clamp_min(1.0)
    return anchor_loss.mean()
