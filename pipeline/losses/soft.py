"""ASCL's adaptive soft targets (Feng & Patras 2022): sharpened key relations, their confidence, target rows.

Relations come from the key, never the query: ``a = k · referenceᵀ / τ'`` over a reference set (MoCo:
the whole queue; BYOL: the other keys of the batch). ``p = softmax(a)`` and the confidence
``c = 1 − H(p) / log n`` (n entries in the reference set) say how peaked the relations are. A target
row gives the own key 1 and the reference entries, by mode, ``hard``: 1 on the top ``num_neighbors``;
``ahcl``: ``c`` on the top ``num_neighbors``; ``ascl``: ``min(1, num_neighbors · c · p_j)`` on every
entry. Rows are then normalised to sum 1. Targets never carry gradient.
"""

from __future__ import annotations

import math

import torch

ASCL_MODES = ("hard", "ahcl", "ascl")


def check_neighbours(num_neighbors: int) -> None:
    """Return None if ``num_neighbors`` is an int >= 0; raise ValueError otherwise."""
    if isinstance(num_neighbors, bool) or not isinstance(num_neighbors, int) or num_neighbors < 0:
        raise ValueError(f"num_neighbors must be an int >= 0, got {num_neighbors!r}")


def check_mode(mode: str, num_neighbors: int, num_entries: int) -> None:
    """Return None if ``mode`` and ``num_neighbors`` suit ``num_entries`` reference entries; raise ValueError."""
    if mode not in ASCL_MODES:
        raise ValueError(f"ASCL mode {mode!r} is not one of {', '.join(ASCL_MODES)}")
    check_neighbours(num_neighbors)
    if num_neighbors > num_entries:
        raise ValueError(f"num_neighbors = {num_neighbors} exceeds the {num_entries} entries it is chosen from")


@torch.no_grad()
def neighbour_relations(k: torch.Tensor, reference: torch.Tensor, sharpen_temperature: float) -> torch.Tensor:
    """Return the sharpened relations ``k · referenceᵀ / τ'`` ``# [B, n]`` (no gradient)."""
    if k.dim() != 2 or reference.dim() != 2 or reference.shape[1] != k.shape[1]:
        raise ValueError(f"expected k [B, D] and reference [n, D], got {tuple(k.shape)} and {tuple(reference.shape)}")
    return (k @ reference.T) / sharpen_temperature


def _softmax_and_confidence(relations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``p = softmax(relations)`` ``# [B, n]`` and ``c = 1 − H(p) / log n`` ``# [B]`` (two passes over rows)."""
    count = relations.shape[1]
    log_normaliser = torch.logsumexp(relations, dim=1, keepdim=True)  # [B, 1]
    p = (relations - log_normaliser).exp_()
    # H(p) = log Σ exp(a) − Σ p·a: no [B, n] log-probabilities are materialised.
    entropy = log_normaliser.squeeze(1) - torch.einsum("ij,ij->i", p, relations)
    if count == 1:
        # One entry has zero entropy and log 1 = 0: it is a point mass, fully confident.
        return p, torch.ones_like(entropy)
    return p, (1.0 - entropy / math.log(count)).clamp_(0.0, 1.0)


@torch.no_grad()
def relation_confidence(relations: torch.Tensor) -> torch.Tensor:
    """Return ``c = 1 − H(softmax(relations)) / log n`` per row ``# [B]``: 0 for uniform rows, 1 for one-hot rows."""
    return _softmax_and_confidence(relations)[1]


@torch.no_grad()
def soft_targets(relations: torch.Tensor, mode: str, num_neighbors: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the target rows over ``[own key, reference]`` ``# [B, 1+n]`` and the confidence ``# [B]``."""
    check_mode(mode, num_neighbors, relations.shape[1])
    p, confidence = _softmax_and_confidence(relations)
    batch, count = relations.shape
    # The rows are written in place into one [B, 1+n] buffer: at n = 65536 every extra pass costs.
    rows = relations.new_zeros(batch, 1 + count)
    rows[:, 0] = 1.0
    if num_neighbors > 0 and mode == "ascl":
        torch.mul(p, (num_neighbors * confidence)[:, None], out=rows[:, 1:])
        rows[:, 1:].clamp_max_(1.0)
    elif num_neighbors > 0:
        top = relations.topk(num_neighbors, dim=1).indices  # [B, num_neighbors]
        value = confidence[:, None].expand_as(top) if mode == "ahcl" else torch.ones_like(top, dtype=relations.dtype)
        rows[:, 1:].scatter_(1, top, value.to(relations.dtype))
    return rows.div_(rows.sum(dim=1, keepdim=True)), confidence


def ascl_targets(
    k: torch.Tensor, queue: torch.Tensor, mode: str, num_neighbors: int, sharpen_temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ASCL's targets over ``[own key, queue]`` ``# [B, 1+K]`` and the confidence ``# [B]``, from the keys."""
    return soft_targets(neighbour_relations(k, queue, sharpen_temperature), mode, num_neighbors)


def off_diagonal(square: torch.Tensor) -> torch.Tensor:
    """Return the off-diagonal entries of ``square [B, B, ...]`` row by row ``# [B, B-1, ...]`` (no host sync)."""
    batch = square.shape[0]
    rest = square.shape[2:]
    # Dropping the first element leaves B-1 rows of B+1 whose last entry is the next diagonal element.
    flat = square.reshape(batch * batch, *rest)[1:].reshape(batch - 1, batch + 1, *rest)
    return flat[:, :-1].reshape(batch, batch - 1, *rest)


def with_diagonal(off: torch.Tensor, value: float) -> torch.Tensor:
    """Return ``[B, B]`` with ``off [B, B-1]`` off the diagonal and ``value`` on it (inverse of ``off_diagonal``)."""
    batch = off.shape[0]
    padded = torch.cat([off.reshape(batch - 1, batch), off.new_full((batch - 1, 1), value)], dim=1)
    return torch.cat([off.new_full((1,), value), padded.reshape(-1)]).view(batch, batch)


@torch.no_grad()
def in_batch_targets(
    k: torch.Tensor, num_neighbors: int, sharpen_temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ASCL-BYOL's in-batch targets ``# [B, B]`` (own key on the diagonal) and the confidence ``# [B]``.

    Each key's relations are to the other ``B − 1`` keys of the batch, in ``ascl`` mode.
    """
    batch = k.shape[0]
    check_neighbours(num_neighbors)
    if num_neighbors > 0 and batch < 3:
        raise ValueError(f"in-batch soft targets need at least 3 keys (relations to B - 1 >= 2 others), got {batch}")
    if num_neighbors == 0:
        return torch.eye(batch, dtype=k.dtype, device=k.device), torch.zeros(batch, dtype=k.dtype, device=k.device)
    relations = off_diagonal(neighbour_relations(k, k, sharpen_temperature))  # [B, B-1]
    p, confidence = _softmax_and_confidence(relations)
    weights = (num_neighbors * confidence[:, None] * p).clamp_max(1.0)
    rows = with_diagonal(weights, 1.0)
    return rows / rows.sum(dim=1, keepdim=True), confidence


def soft_byol(p: torch.Tensor, k: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return ``mean_i (2 − 2 Σ_j targets_ij · p_i·k_j)`` for normalised ``p``, ``k`` ``[B, D]``, targets ``[B, B]``."""
    if p.dim() != 2 or k.shape != p.shape:
        raise ValueError(f"expected p and k of equal shape [B, D], got p {tuple(p.shape)} k {tuple(k.shape)}")
    return (2.0 - 2.0 * (targets * (p @ k.T)).sum(dim=1)).mean()


def ascl_byol(p: torch.Tensor, k: torch.Tensor, num_neighbors: int, sharpen_temperature: float) -> torch.Tensor:
    """Return ASCL's BYOL loss: ``soft_byol`` against the in-batch soft targets of the keys (plain BYOL at 0)."""
    targets, _ = in_batch_targets(k.detach(), num_neighbors, sharpen_temperature)
    return soft_byol(p, k.detach(), targets)


__all__ = [
    "ASCL_MODES",
    "ascl_byol",
    "ascl_targets",
    "in_batch_targets",
    "neighbour_relations",
    "off_diagonal",
    "relation_confidence",
    "soft_byol",
    "soft_targets",
    "with_diagonal",
]
