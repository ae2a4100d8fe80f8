"""dscl, scl and pbsd against brute-force references that loop over anchors, entries and patches in float64."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import class_positive_count, contrast_logits, dscl, pbsd, scl


def unit(*shape: int, seed: int) -> torch.Tensor:
    """Return random float64 rows L2-normalised along the last dimension."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


def dscl_reference(q, k, queue, labels, queue_labels, alpha, temperature, uniform=False) -> torch.Tensor:
    """Return DSCL one anchor and one entry at a time; ``uniform`` weighs every positive 1/(|P|+1) (SCL)."""
    batch = q.shape[0]
    entries = [(q[j], int(labels[j]), ("query", j)) for j in range(batch)]
    entries += [(k[j], int(labels[j]), ("key", j)) for j in range(batch)]
    entries += [(queue[j], int(queue_labels[j]), ("queue", j)) for j in range(queue.shape[0])]
    total = q.new_zeros(())
    for i in range(batch):
        others = [entry for entry in entries if entry[2] != ("query", i)]
        denominator = sum(torch.exp(torch.dot(q[i], vector) / temperature) for vector, _, _ in others)

        def log_p(vector: torch.Tensor, denominator=denominator, i=i) -> torch.Tensor:
            return torch.log(torch.exp(torch.dot(q[i], vector) / temperature) / denominator)

        positives = [
            vector for vector, label, name in others if name != ("key", i) and label == int(labels[i]) and label >= 0
        ]
        own = alpha if not uniform else 1.0 / (len(positives) + 1)
        if not positives:
            total = total - log_p(k[i])
            continue
        total = total - own * log_p(k[i]) - (1 - own) / len(positives) * sum(log_p(vector) for vector in positives)
    return total / batch


LABELS = torch.tensor([0, 1, 0, 2, 1])
QUEUE_LABELS = torch.tensor([0, 1, 1, 3, 0, 2, 1])


@pytest.mark.parametrize("alpha", [0.0, 1 / 9, 0.5, 1.0])
def test_dscl_matches_reference_value_and_gradient(alpha: float) -> None:
    q, k, queue = unit(5, 6, seed=0), unit(5, 6, seed=1), unit(7, 6, seed=2)
    mine_q, reference_q = q.clone().requires_grad_(), q.clone().requires_grad_()
    mine = dscl(mine_q, k, queue, LABELS, QUEUE_LABELS, alpha, 0.07)
    expected = dscl_reference(reference_q, k, queue, LABELS, QUEUE_LABELS, alpha, 0.07)
    torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-12)
    mine.backward()
    expected.backward()
    # q is both the anchor and a contrast entry of the other anchors: both paths reach its gradient.
    torch.testing.assert_close(mine_q.grad, reference_q.grad, rtol=1e-9, atol=1e-12)


def test_alpha_one_over_positives_plus_one_is_scl() -> None:
    q, k, queue = unit(5, 6, seed=3), unit(5, 6, seed=4), unit(7, 6, seed=5)
    count = class_positive_count(LABELS, QUEUE_LABELS)
    assert count.tolist() == [2 * 1 + 2, 2 * 1 + 3, 2 * 1 + 2, 0 + 1, 2 * 1 + 3]
    per_query = 1.0 / (count.double() + 1.0)
    torch.testing.assert_close(
        scl(q, k, queue, LABELS, QUEUE_LABELS, 0.1), dscl(q, k, queue, LABELS, QUEUE_LABELS, per_query, 0.1)
    )
    expected = dscl_reference(q, k, queue, LABELS, QUEUE_LABELS, None, 0.1, uniform=True)
    torch.testing.assert_close(scl(q, k, queue, LABELS, QUEUE_LABELS, 0.1), expected, rtol=1e-10, atol=1e-12)


def test_anchor_without_class_positive_puts_all_weight_on_its_key() -> None:
    q, k, queue = unit(3, 4, seed=6), unit(3, 4, seed=7), unit(4, 4, seed=8)
    labels, queue_labels = torch.tensor([0, 1, 2]), torch.tensor([5, 5, 5, 5])
    # No anchor has a class positive: every alpha gives the InfoNCE-like loss over all other entries.
    values = [dscl(q, k, queue, labels, queue_labels, alpha) for alpha in (0.0, 0.3, 1.0)]
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], values[2])
    torch.testing.assert_close(values[0], dscl_reference(q, k, queue, labels, queue_labels, 0.3, 0.07))
    assert torch.isfinite(values[0])
    # Unknown labels (-1) never make positives, even with each other.
    unknown = torch.tensor([-1, -1, -1])
    torch.testing.assert_close(dscl(q, k, queue, unknown, torch.full((4,), -1), 0.0), values[0])


def test_dscl_rejects_bad_alpha_and_shapes() -> None:
    q, k, queue = unit(3, 4, seed=9), unit(3, 4, seed=10), unit(4, 4, seed=11)
    with pytest.raises(ValueError, match="alpha must lie in"):
        dscl(q, k, queue, torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="queue_labels"):
        dscl(q, k, queue, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 0.5)


def pbsd_reference(teacher, student, k, queue, temperature) -> torch.Tensor:
    """Return PBSD one patch and one image at a time."""
    total, patches, batch = 0.0, teacher.shape[0], teacher.shape[1]
    for patch in range(patches):
        for i in range(batch):
            entries = [k[i]] + [queue[j] for j in range(queue.shape[0])]
            t = [float(torch.dot(teacher[patch, i], entry)) / temperature for entry in entries]
            s = [float(torch.dot(student[patch, i], entry)) / temperature for entry in entries]
            t_norm = math.log(sum(math.exp(value) for value in t))
            s_norm = math.log(sum(math.exp(value) for value in s))
            total -= sum(math.exp(tv - t_norm) * (sv - s_norm) for tv, sv in zip(t, s, strict=True))
    return torch.tensor(total / (patches * batch), dtype=torch.float64)


def test_pbsd_matches_reference_and_teacher_gets_no_gradient() -> None:
    teacher = unit(3, 4, 6, seed=12).requires_grad_()
    student = unit(3, 4, 6, seed=13).requires_grad_()
    k, queue = unit(4, 6, seed=14), unit(5, 6, seed=15)
    loss = pbsd(teacher, student, k, queue, 0.07)
    torch.testing.assert_close(loss, pbsd_reference(teacher.detach(), student.detach(), k, queue, 0.07))
    loss.backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_pbsd_of_a_student_equal_to_its_teacher_is_the_teacher_entropy() -> None:
    features = unit(2, 3, 6, seed=16)
    k, queue = unit(3, 6, seed=17), unit(4, 6, seed=18)
    logits = contrast_logits(features.reshape(6, 6), k.repeat(2, 1), queue, 0.07)
    entropy = -(logits.softmax(dim=1) * logits.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(pbsd(features, features.clone(), k, queue, 0.07), entropy)


@pytest.mark.parametrize("loss", ["dscl", "scl"])
def test_anchor_shares_average_to_the_whole_batch_loss_and_gradient(loss: str) -> None:
    # Two workers' anchor rows (0-2 and 2-4 of a 4-query batch) against the whole batch's entries: their mean
    # is the loss, and the sum of their gradients the gradient, of every query as an anchor.
    q, k, queue = unit(4, 6, seed=0), unit(4, 6, seed=1), unit(7, 6, seed=2)
    labels = LABELS[:4]
    function = functools.partial(dscl, alpha=1 / 9) if loss == "dscl" else scl
    whole_q, split_q = q.clone().requires_grad_(), q.clone().requires_grad_()
    whole = function(whole_q, k, queue, labels, QUEUE_LABELS)
    shares = [function(split_q, k, queue, labels, QUEUE_LABELS, anchors=rows) for rows in ((0, 2), (2, 4))]
    split = torch.stack(shares).mean()
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)
    whole.backward()
    split.backward()
    torch.testing.assert_close(split_q.grad, whole_q.grad, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(shares[0], shares[1])
    with pytest.raises(ValueError, match="anchors must be rows"):
        function(q, k, queue, labels, QUEUE_LABELS, anchors=(2, 5))
