"""HCSC's prototype losses (Guo et al. 2022): cluster concentration, instance- and prototype-wise selective coding.

A level of the hierarchy is a set of normalised prototypes ``centroids [N, D]`` with a concentration
``φ [N]`` each. ICSC drops queue negatives that probably share the query's cluster (they stay in the
denominator with logit 0, as the official code does); PCSC contrasts the query with its prototype
against the prototypes that are no sample's positive in the batch, dropping those that probably
share the positive's parent. Probabilities are returned unclamped; callers clamp before drawing.
"""

from __future__ import annotations

import torch

from pipeline.losses.contrastive import own_key_cross_entropy


def cluster_concentration(
    sq_distances: torch.Tensor, assignments: torch.Tensor, num_clusters: int, temperature: float = 0.2
) -> torch.Tensor:
    """Return PCL's concentration φ per cluster ``# [num_clusters]``, rescaled so that its mean is ``temperature``.

    ``sq_distances [n]`` are each member's squared L2 distance to its (unnormalised) centroid and
    ``assignments [n]`` its cluster. φ = mean(sqrt(d²)) / log(n + 10) for clusters of n > 1 members,
    the largest such φ for the others; then clipped to the 10th–90th percentile (linear
    interpolation, as ``numpy.percentile``) and rescaled.
    """
    if sq_distances.shape != assignments.shape or sq_distances.dim() != 1:
        raise ValueError(
            f"expected sq_distances and assignments of equal shape [n], got {tuple(sq_distances.shape)} "
            f"and {tuple(assignments.shape)}"
        )
    dtype = sq_distances.dtype if sq_distances.is_floating_point() else torch.float32
    counts = torch.bincount(assignments, minlength=num_clusters).to(dtype)
    if counts.shape[0] != num_clusters:
        raise ValueError(f"assignments name clusters beyond num_clusters = {num_clusters}")
    distance_sums = torch.zeros(num_clusters, dtype=dtype, device=sq_distances.device)
    distance_sums.index_add_(0, assignments, sq_distances.to(dtype).clamp_min(0).sqrt())
    populated = counts > 1
    phi = distance_sums / counts.clamp_min(1.0) / torch.log(counts + 10.0)
    largest = phi[populated].max() if bool(populated.any()) else phi.new_tensor(1.0)
    phi = torch.where(populated, phi, largest)
    low, high = torch.quantile(phi, torch.tensor([0.1, 0.9], dtype=dtype, device=phi.device))
    phi = phi.clamp(low, high)
    mean = phi.mean()
    if not bool(mean > 0):
        # Every cluster has zero spread (collapsed or duplicate embeddings): no cluster is tighter than another.
        return torch.full_like(phi, temperature)
    return temperature * phi / mean


def icsc_selection_probs(
    queue: torch.Tensor, centroids: torch.Tensor, concentration: torch.Tensor, query_clusters: torch.Tensor
) -> torch.Tensor:
    """Return ``[B, K]``: the probability of keeping queue entry j as a negative of query i (before clamping).

    ``p_ij = 1 − softmax_c(queue_j · μ_c / max(φ_c, 1e-3))[cluster(i)]``: entries likely in the query's
    cluster are likely dropped.
    """
    membership = torch.softmax((queue @ centroids.T) / concentration.clamp_min(1e-3), dim=1)  # [K, N]
    return 1.0 - membership[:, query_clusters].T


def icsc(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, masks: list[torch.Tensor] | None, temperature: float
) -> torch.Tensor:
    """Return HCSC's instance loss: the sum over levels of InfoNCE with deselected negatives' logits set to 0.

    ``masks`` holds one 0/1 ``[B, K]`` tensor per level (1 keeps the negative); a dropped negative keeps
    logit 0 in the denominator. ``None`` (selection off) is plain InfoNCE, once.
    """
    positive = (q * k).sum(dim=1, keepdim=True)  # [B, 1]
    negatives = q @ queue.T  # [B, K]
    if masks is None:
        return own_key_cross_entropy(torch.cat([positive, negatives], dim=1) / temperature)
    if not masks:
        raise ValueError("icsc needs at least one mask per level, or None for selection off")
    total = q.new_zeros(())
    for mask in masks:  # one term per hierarchy level (a handful), never per sample
        if mask.shape != negatives.shape:
            raise ValueError(f"icsc masks must be [B, K] = {tuple(negatives.shape)}, got {tuple(mask.shape)}")
        kept = negatives * mask.to(negatives.dtype)
        total = total + own_key_cross_entropy(torch.cat([positive, kept], dim=1) / temperature)
    return total


def pcsc_negative_ids(batch_clusters: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Return the ids ``# [M]`` of the prototypes that are no sample's positive in the batch, ascending.

    Every id in ``[0, num_clusters)`` not in ``batch_clusters`` is included, the highest one too (the
    official code drops it by an off-by-one; this does not).
    """
    free = torch.ones(num_clusters, dtype=torch.bool, device=batch_clusters.device)
    free[batch_clusters] = False
    return free.nonzero().squeeze(1)


def pcsc_selection_probs(
    centroid_similarity: torch.Tensor,
    upper_concentration: torch.Tensor,
    query_parents: torch.Tensor,
    negative_ids: torch.Tensor,
) -> torch.Tensor:
    """Return ``[B, M]``: the probability of keeping each negative prototype for each query (before clamping).

    ``centroid_similarity [N_l, N_{l+1}]`` holds ``μ_t · μ^{l+1}_u``; for negative prototype t and query i,
    ``p = 1 − softmax_u(sim(μ_t, μ^{l+1}_u) / φ^{l+1}_u)[parent(pos_i)]``.
    """
    membership = torch.softmax(centroid_similarity[negative_ids] / upper_concentration, dim=1)  # [M, N_{l+1}]
    return 1.0 - membership[:, query_parents].T


def pcsc(
    q: torch.Tensor,
    centroids: torch.Tensor,
    concentration: torch.Tensor,
    positive_ids: torch.Tensor,
    negative_ids: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return HCSC's prototype loss for one level: ``[q·μ_pos / φ_pos, (q·μ_neg ⊙ mask) / φ_neg]``, target 0.

    ``positive_ids [B]`` is each query's cluster, ``negative_ids [M]`` the shared negatives and ``mask``
    ``[B, M]`` (1 keeps; None keeps all).
    """
    positive = (q * centroids[positive_ids]).sum(dim=1, keepdim=True) / concentration[positive_ids][:, None]
    negatives = q @ centroids[negative_ids].T  # [B, M]
    if mask is not None:
        if mask.shape != negatives.shape:
            raise ValueError(f"pcsc mask must be [B, M] = {tuple(negatives.shape)}, got {tuple(mask.shape)}")
        negatives = negatives * mask.to(negatives.dtype)
    negatives = negatives / concentration[negative_ids][None, :]
    return own_key_cross_entropy(torch.cat([positive, negatives], dim=1))


__all__ = [
    "cluster_concentration",
    "icsc",
    "icsc_selection_probs",
    "pcsc",
    "pcsc_negative_ids",
    "pcsc_selection_probs",
]
