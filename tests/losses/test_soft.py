"""ASCL's soft targets, soft InfoNCE and BYOL variant against brute-force references written with loops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import (
    ascl_byol,
    ascl_targets,
    contrast_accuracy,
    contrast_logits,
    in_batch_targets,
    info_nce,
    relation_confidence,
    soft_info_nce,
)


def unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Return random rows L2-normalised along the last dimension."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1).to(dtype)


def targets_reference(
    k: torch.Tensor, reference: torch.Tensor, mode: str, neighbours: int, sharpen: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ASCL's target rows and confidences one key and one reference entry at a time."""
    rows, confidences = [], []
    count = reference.shape[0]
    for i in range(k.shape[0]):
        relations = [float(torch.dot(k[i], reference[j])) / sharpen for j in range(count)]
        top = max(relations)
        exps = [math.exp(value - top) for value in relations]
        p = [value / sum(exps) for value in exps]
        entropy = -sum(value * math.log(value) for value in p if value > 0)
        confidence = 1.0 - entropy / math.log(count)
        order = sorted(range(count), key=lambda j: -relations[j])[:neighbours]
        weights = [1.0]
        for j in range(count):
            if mode == "hard":
                weights.append(1.0 if j in order else 0.0)
            elif mode == "ahcl":
                weights.append(confidence if j in order else 0.0)
            else:
                weights.append(min(1.0, neighbours * confidence * p[j]))
        rows.append([weight / sum(weights) for weight in weights])
        confidences.append(confidence)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(confidences, dtype=torch.float64)


def soft_info_nce_reference(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Return the soft cross-entropy one query and one column at a time."""
    total = q.new_zeros(())
    for i in range(q.shape[0]):
        logits = [torch.dot(q[i], k[i]) / temperature] + [
            torch.dot(q[i], queue[j]) / temperature for j in range(queue.shape[0])
        ]
        log_denominator = torch.log(sum(torch.exp(logit) for logit in logits))
        total = total - sum(targets[i, j] * (logits[j] - log_denominator) for j in range(len(logits)))
    return total / q.shape[0]


def byol_reference(p: torch.Tensor, k: torch.Tensor, neighbours: int, sharpen: float) -> torch.Tensor:
    """Return ASCL-BYOL's loss one sample and one other key at a time."""
    batch = k.shape[0]
    total = 0.0
    for i in range(batch):
        others = [j for j in range(batch) if j != i]
        relations = [float(torch.dot(k[i], k[j])) / sharpen for j in others]
        top = max(relations)
        exps = [math.exp(value - top) for value in relations]
        q = [value / sum(exps) for value in exps]
        confidence = 1.0 - (-sum(value * math.log(value) for value in q if value > 0)) / math.log(batch - 1)
        weights = {i: 1.0}
        for position, j in enumerate(others):
            weights[j] = min(1.0, neighbours * confidence * q[position])
        norm = sum(weights.values())
        total += 2.0 - 2.0 * sum(weights[j] / norm * float(torch.dot(p[i], k[j])) for j in range(batch))
    return torch.tensor(total / batch, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["hard", "ahcl", "ascl"])
@pytest.mark.parametrize("neighbours", [1, 3])
def test_targets_match_reference(mode: str, neighbours: int) -> None:
    k, queue = unit(5, 8, seed=0), unit(12, 8, seed=1)
    targets, confidence = ascl_targets(k, queue, mode, neighbours, 0.05)
    expected_targets, expected_confidence = targets_reference(k, queue, mode, neighbours, 0.05)
    torch.testing.assert_close(targets, expected_targets, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(confidence, expected_confidence, rtol=1e-10, atol=1e-12)
    assert not targets.requires_grad


@pytest.mark.parametrize("mode", ["hard", "ahcl", "ascl"])
def test_zero_neighbours_is_exactly_info_nce(mode: str) -> None:
    q, k, queue = unit(6, 8, seed=2), unit(6, 8, seed=3), unit(10, 8, seed=4)
    targets, _ = ascl_targets(k, queue, mode, 0, 0.05)
    assert torch.equal(targets, F.one_hot(torch.zeros(6, dtype=torch.long), 11).double())
    torch.testing.assert_close(soft_info_nce(q, k, queue, targets, 0.1), info_nce(q, k, queue, 0.1))


def test_soft_info_nce_matches_reference_and_gradcheck() -> None:
    q, k, queue = unit(4, 6, seed=5), unit(4, 6, seed=6), unit(7, 6, seed=7)
    targets, _ = ascl_targets(k, queue, "ascl", 2, 0.05)
    torch.testing.assert_close(
        soft_info_nce(q, k, queue, targets, 0.1), soft_info_nce_reference(q, k, queue, targets, 0.1), rtol=1e-10, atol=0
    )
    inputs = (q.clone().requires_grad_(), k.clone().requires_grad_(), queue.clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b, c: soft_info_nce(a, b, c, targets, 0.1), inputs)


def test_uniform_relations_give_confidence_zero_and_one_hot_give_one() -> None:
    k = unit(3, 4, seed=8)
    identical = k[:1].expand(9, 4)  # every queue entry the same: uniform relations for every key
    torch.testing.assert_close(ascl_targets(k, identical, "ascl", 1, 0.05)[1], torch.zeros(3, dtype=torch.float64))
    basis = torch.eye(4, dtype=torch.float64)
    # Each key equals one basis vector and is orthogonal to the others: at τ' = 1e-4 the softmax is one-hot.
    _, confidence = ascl_targets(basis[:3], basis, "ascl", 1, 1e-4)
    torch.testing.assert_close(confidence, torch.ones(3, dtype=torch.float64))
    assert torch.equal(relation_confidence(torch.zeros(2, 1, dtype=torch.float64)), torch.ones(2, dtype=torch.float64))


def test_hard_spreads_one_over_k_plus_one_and_ascl_clips_at_one() -> None:
    k, queue = unit(4, 8, seed=9), unit(16, 8, seed=10)
    targets, _ = ascl_targets(k, queue, "hard", 3, 0.05)
    assert torch.equal((targets > 0).sum(dim=1), torch.full((4,), 4))
    torch.testing.assert_close(targets[targets > 0], torch.full((16,), 0.25, dtype=torch.float64))
    basis = torch.eye(4, dtype=torch.float64)
    # One-hot relations with K = 3: K·c·p = 3 on the own entry is clipped to 1, so the row is [1, 1, 0, ...] / 2.
    targets, _ = ascl_targets(basis, basis, "ascl", 3, 1e-4)
    expected = torch.cat([torch.ones(4, 1), torch.eye(4)], dim=1).double() / 2
    torch.testing.assert_close(targets, expected)


def test_targets_work_in_float32_and_rows_sum_to_one() -> None:
    k, queue = unit(8, 16, seed=11, dtype=torch.float32), unit(64, 16, seed=12, dtype=torch.float32)
    for mode in ("hard", "ahcl", "ascl"):
        targets, confidence = ascl_targets(k, queue, mode, 5, 0.05)
        assert targets.dtype == torch.float32 and confidence.dtype == torch.float32
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(8))
        assert bool(((confidence >= 0) & (confidence <= 1)).all())


def test_bad_mode_and_too_many_neighbours_are_rejected() -> None:
    k, queue = unit(2, 4, seed=13), unit(5, 4, seed=14)
    with pytest.raises(ValueError, match="mode 'soft'"):
        ascl_targets(k, queue, "soft", 1, 0.05)
    with pytest.raises(ValueError, match="num_neighbors = 6 exceeds the 5 entries"):
        ascl_targets(k, queue, "hard", 6, 0.05)
    with pytest.raises(ValueError, match="num_neighbors must be an int >= 0"):
        ascl_targets(k, queue, "ascl", -1, 0.05)


def test_contrast_logits_and_accuracy() -> None:
    q, k, queue = unit(5, 4, seed=15), unit(5, 4, seed=16), unit(3, 4, seed=17)
    logits = contrast_logits(q, q, queue, 0.5)  # the own key is the query itself: cosine 1 beats every entry
    assert logits.shape == (5, 4)
    assert float(contrast_accuracy(logits)) == 1.0
    torch.testing.assert_close(logits[:, 0], torch.full((5,), 2.0, dtype=torch.float64))
    wrong = contrast_logits(q, -q, queue, 0.5)
    assert float(contrast_accuracy(wrong)) == 0.0
    torch.testing.assert_close(
        info_nce(q, k, queue, 0.5), F.cross_entropy(contrast_logits(q, k, queue, 0.5), torch.zeros(5, dtype=torch.long))
    )


@pytest.mark.parametrize("neighbours", [1, 4])
def test_ascl_byol_matches_reference(neighbours: int) -> None:
    p, k = unit(6, 8, seed=18), unit(6, 8, seed=19)
    torch.testing.assert_close(ascl_byol(p, k, neighbours, 0.05), byol_reference(p, k, neighbours, 0.05))


def test_ascl_byol_without_neighbours_is_plain_byol_and_targets_keep_the_diagonal() -> None:
    p, k = unit(5, 8, seed=20), unit(5, 8, seed=21)
    torch.testing.assert_close(ascl_byol(p, k, 0, 0.05), (2 - 2 * (p * k).sum(dim=1)).mean())
    targets, confidence = in_batch_targets(k, 2, 0.05)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(5, dtype=torch.float64))
    assert bool((targets.diagonal() >= targets.max(dim=1).values - 1e-12).all())  # the own key weighs most
    assert confidence.shape == (5,)
    leaf = p.clone().requires_grad_()
    ascl_byol(leaf, k, 2, 0.05).backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_off_diagonal_and_its_inverse() -> None:
    from pipeline.losses import off_diagonal, with_diagonal

    square = torch.arange(16.0).view(4, 4)
    off = off_diagonal(square)
    expected = torch.tensor([[j + 4 * i for j in range(4) if j != i] for i in range(4)], dtype=torch.float32)
    assert torch.equal(off, expected)
    rebuilt = with_diagonal(off, -1.0)
    assert torch.equal(rebuilt.diagonal(), torch.full((4,), -1.0))
    assert torch.equal(off_diagonal(rebuilt), off)


def test_ascl_byol_needs_three_keys() -> None:
    with pytest.raises(ValueError, match="at least 3 keys"):
        ascl_byol(unit(2, 4, seed=22), unit(2, 4, seed=23), 1, 0.05)
