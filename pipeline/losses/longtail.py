"""Long-tailed contrastive losses (Xuan et al. 2023): decoupled supervised contrast (DSCL), its SCL baseline, PBSD.

``dscl`` and ``scl`` contrast each query against every other query, every key and the queue, with
labels: positives are the query's own key and every other entry of its class. They differ only in
how the positives are weighted. ``pbsd`` distils patch features from the image's own feature map
(teacher) into the features of the cropped patches (students), both contrasted against the keys.
"""

from __future__ import annotations

import torch

from pipeline.losses.contrastive import contrast_logits, soft_cross_entropy


def _labelled_contrast(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    labels: torch.Tensor,
    queue_labels: torch.Tensor,
    temperature: float,
    anchors: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return each anchor's log-probability of its own key ``[A]``, of every entry ``[A, 2B+K]`` and the class mask.

    Entries are ``[queries, keys, queue]``; the anchors are the queries in rows ``anchors = (start, stop)``
    (all B by default); the softmax runs over every entry but the anchor itself. The class mask marks the
    other entries with the anchor's label (its own key and itself excluded, unknown labels never match).
    """
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(f"expected q and k of equal shape [B, D], got q {tuple(q.shape)} k {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"expected queue [K, D] with D = {q.shape[1]}, got {tuple(queue.shape)}")
    batch = q.shape[0]
    if labels.shape != (batch,) or queue_labels.shape != (queue.shape[0],):
        raise ValueError(
            f"expected labels [{batch}] and queue_labels [{queue.shape[0]}], "
            f"got {tuple(labels.shape)} and {tuple(queue_labels.shape)}"
        )
    start, stop = (0, batch) if anchors is None else anchors
    if not 0 <= start < stop <= batch:
        raise ValueError(f"anchors must be rows (start, stop) with 0 <= start < stop <= {batch}, got {anchors}")
    entries = torch.cat([q, k, queue])  # [2B+K, D]; q stays attached: it is also a contrast entry
    entry_labels = torch.cat([labels, labels, queue_labels])  # [2B+K]
    anchor_labels = labels[start:stop]  # [A]
    local = torch.arange(stop - start, device=q.device)
    rows = local + start  # the anchors' own rows among the entries
    logits = (q[start:stop] @ entries.T) / temperature  # [A, 2B+K]
    logits = logits.index_put((local, rows), logits.new_tensor(float("-inf")))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    own_key = log_prob[local, rows + batch]  # [A]
    same = (anchor_labels[:, None] == entry_labels[None, :]) & (anchor_labels[:, None] >= 0)  # [A, 2B+K]
    same[local, rows] = False
    same[local, rows + batch] = False
    return own_key, log_prob, same


def _weighted_loss(
    own_key: torch.Tensor, log_prob: torch.Tensor, same: torch.Tensor, own_weight: torch.Tensor
) -> torch.Tensor:
    """Return the mean over anchors of ``−(w · log p_own + (1 − w)/|P| · Σ_P log p)``, with ``w = 1`` if P = ∅."""
    count = same.sum(dim=1).to(log_prob.dtype)  # [B]
    has_class = count > 0
    own_weight = torch.where(has_class, own_weight.to(log_prob.dtype), torch.ones_like(count))
    class_sum = torch.where(same, log_prob, torch.zeros_like(log_prob)).sum(dim=1)  # [B]; -inf on self is masked
    class_term = torch.where(has_class, (1.0 - own_weight) * class_sum / count.clamp_min(1.0), torch.zeros_like(count))
    return -(own_weight * own_key + class_term).mean()


def dscl(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    labels: torch.Tensor,
    queue_labels: torch.Tensor,
    alpha: float | torch.Tensor,
    temperature: float = 0.07,
    anchors: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Return the mean decoupled supervised contrastive loss of the queries ``q [B, D]``.

    Entries are the other queries, all keys ``k [B, D]`` and the ``queue [K, D]`` (labels
    ``queue_labels [K]``). The own key weighs ``alpha`` and the ``|P|`` other same-label entries share
    ``1 − alpha`` equally; with no such entry the own key weighs 1. ``alpha`` is a float in [0, 1] or a
    per-anchor tensor ``[A]``. The official code's β is ``alpha = 1 / (1 + β)`` (β = 8: alpha = 1/9).
    ``anchors = (start, stop)`` restricts the anchors to those rows of ``q`` (a worker's share of a
    gathered global batch; the entries stay the whole batch); by default every query is an anchor.
    """
    count = q.shape[0] if anchors is None else anchors[1] - anchors[0]
    if isinstance(alpha, torch.Tensor):
        if alpha.shape != (count,):
            raise ValueError(f"a per-anchor alpha must have shape [{count}], got {tuple(alpha.shape)}")
        weight = alpha.to(q.device)
    else:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        weight = torch.full((count,), float(alpha), dtype=q.dtype, device=q.device)
    own_key, log_prob, same = _labelled_contrast(q, k, queue, labels, queue_labels, temperature, anchors)
    return _weighted_loss(own_key, log_prob, same, weight)


def scl(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    labels: torch.Tensor,
    queue_labels: torch.Tensor,
    temperature: float = 0.07,
    anchors: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Return the mean supervised contrastive loss with a queue (DSCL's SCL baseline): every positive weighs equally.

    The own key and the ``|P|`` other same-label entries each weigh ``1 / (|P| + 1)``: ``dscl`` with a
    per-query ``alpha = 1 / (|P| + 1)``. ``anchors`` as in ``dscl``.
    """
    own_key, log_prob, same = _labelled_contrast(q, k, queue, labels, queue_labels, temperature, anchors)
    uniform = 1.0 / (same.sum(dim=1).to(log_prob.dtype) + 1.0)
    return _weighted_loss(own_key, log_prob, same, uniform)


def class_positive_count(labels: torch.Tensor, queue_labels: torch.Tensor) -> torch.Tensor:
    """Return ``|P|`` per query ``# [B]``: same-label entries among the other queries, the other keys and the queue."""
    batch_matches = (labels[:, None] == labels[None, :]).sum(dim=1) - 1  # other queries (and, equally, other keys)
    queue_matches = (labels[:, None] == queue_labels[None, :]).sum(dim=1)
    known = labels >= 0
    return torch.where(known, 2 * batch_matches + queue_matches, torch.zeros_like(batch_matches))


def pbsd(
    teacher: torch.Tensor, student: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Return patch-based self-distillation: mean over patches and images of CE(softmax(teacher), student logits).

    ``teacher`` and ``student`` are ``[L, B, D]`` (L patches per image); each row is contrasted against
    its image's key ``k [B, D]`` and the ``queue [K, D]``. The teacher is detached here.
    """
    if teacher.dim() != 3 or student.shape != teacher.shape:
        raise ValueError(
            f"expected teacher and student of equal shape [L, B, D], got {tuple(teacher.shape)} {tuple(student.shape)}"
        )
    patches, batch, dim = teacher.shape
    if k.shape != (batch, dim):
        raise ValueError(f"expected k [{batch}, {dim}], got {tuple(k.shape)}")
    keys = k.expand(patches, batch, dim).reshape(patches * batch, dim)
    with torch.no_grad():
        teacher_logits = contrast_logits(teacher.detach().reshape(patches * batch, dim), keys, queue, temperature)
        targets = torch.softmax(teacher_logits, dim=1)
    student_logits = contrast_logits(student.reshape(patches * batch, dim), keys, queue, temperature)
    return soft_cross_entropy(student_logits, targets)
