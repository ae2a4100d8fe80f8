"""info_nce and supcon against brute-force references that loop over anchors and entries in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.losses import info_nce, supcon


def unit(*shape: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Return random rows L2-normalised along the last dimension."""
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1).to(dtype)


def info_nce_reference(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return InfoNCE computed one query and one logit at a time."""
    total = q.new_zeros(())
    for i in range(q.shape[0]):
        logits = [torch.dot(q[i], k[i]) / temperature]
        for j in range(queue.shape[0]):
            logits.append(torch.dot(q[i], queue[j]) / temperature)
        denominator = sum(torch.exp(logit) for logit in logits)
        total = total - torch.log(torch.exp(logits[0]) / denominator)
    return total / q.shape[0]


def supcon_reference(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float,
    base_temperature: float,
    anchor_views: list[int] | None,
    drop_anchors_without_positives: bool,
) -> torch.Tensor:
    """Return SupCon computed one anchor and one contrast entry at a time, straight from the definition."""
    batch, views, _ = features.shape
    entries = [(view, sample) for view in range(views) for sample in range(batch)]
    anchors = [(view, sample) for view in (anchor_views or range(views)) for sample in range(batch)]

    def label(sample: int) -> int:
        return sample if labels is None else int(labels[sample])

    anchor_losses = []
    for anchor_view, anchor_sample in anchors:
        anchor = features[anchor_sample, anchor_view]
        others = [entry for entry in entries if entry != (anchor_view, anchor_sample)]
        denominator = sum(torch.exp(torch.dot(anchor, features[s, v]) / temperature) for v, s in others)
        positives = [(v, s) for v, s in others if label(s) == label(anchor_sample)]
        if not positives:
            if not drop_anchors_without_positives:
                anchor_losses.append(features.new_zeros(()))
            continue
        log_probs = [
            torch.log(torch.exp(torch.dot(anchor, features[s, v]) / temperature) / denominator) for v, s in positives
        ]
        anchor_losses.append(-(temperature / base_temperature) * sum(log_probs) / len(positives))
    if not anchor_losses:
        return features.new_zeros(())
    return sum(anchor_losses) / len(anchor_losses)


def assert_matches_reference(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    anchor_views: list[int] | None = None,
    drop: bool = False,
) -> None:
    """Check value and gradient of supcon against the reference, both in float64."""
    mine_input = features.clone().requires_grad_(True)
    reference_input = features.clone().requires_grad_(True)
    mine = supcon(mine_input, labels, temperature, base_temperature, anchor_views, drop)
    expected = supcon_reference(reference_input, labels, temperature, base_temperature, anchor_views, drop)
    torch.testing.assert_close(mine, expected, rtol=1e-10, atol=1e-12)
    mine.backward()
    if expected.requires_grad:
        expected.backward()
        torch.testing.assert_close(mine_input.grad, reference_input.grad, rtol=1e-8, atol=1e-12)
    else:
        torch.testing.assert_close(mine_input.grad, torch.zeros_like(features))


def test_info_nce_matches_reference_value_and_gradient() -> None:
    q, k, queue = unit(6, 8, seed=0), unit(6, 8, seed=1), unit(10, 8, seed=2)
    q_mine, q_reference = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
    mine = info_nce(q_mine, k, queue, 0.2)
    expected = info_nce_reference(q_reference, k, queue, 0.2)
    torch.testing.assert_close(mine, expected, rtol=1e-12, atol=1e-12)
    mine.backward()
    expected.backward()
    torch.testing.assert_close(q_mine.grad, q_reference.grad, rtol=1e-10, atol=1e-12)
    assert mine.dim() == 0


def test_info_nce_with_single_queue_entry() -> None:
    q, k, queue = unit(4, 5, seed=3), unit(4, 5, seed=4), unit(1, 5, seed=5)
    torch.testing.assert_close(info_nce(q, k, queue, 0.07), info_nce_reference(q, k, queue, 0.07))


def test_info_nce_gradient_flows_through_every_input_the_caller_leaves_attached() -> None:
    q = unit(3, 4, seed=6).requires_grad_(True)
    k = unit(3, 4, seed=7).requires_grad_(True)
    queue = unit(5, 4, seed=8)
    info_nce(q, k.detach(), queue, 0.2).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert k.grad is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_info_nce_dtypes(dtype: torch.dtype) -> None:
    q, k, queue = unit(5, 6, seed=9, dtype=dtype), unit(5, 6, seed=10, dtype=dtype), unit(7, 6, seed=11, dtype=dtype)
    loss = info_nce(q, k, queue, 0.2)
    assert loss.dtype == dtype
    expected = info_nce_reference(q.double(), k.double(), queue.double(), 0.2)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_info_nce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"D = 3, got \(5, 2\)"):
        info_nce(unit(4, 3, seed=0), unit(4, 3, seed=1), unit(5, 2, seed=2), 0.2)
    with pytest.raises(ValueError, match="equal shape"):
        info_nce(unit(4, 3, seed=0), unit(3, 3, seed=1), unit(5, 3, seed=2), 0.2)


def test_supcon_with_labels() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    assert_matches_reference(unit(6, 2, 8, seed=12), labels)


def test_supcon_without_labels_is_simclr() -> None:
    assert_matches_reference(unit(5, 2, 8, seed=13), None, temperature=0.5)


def test_supcon_without_labels_equals_nt_xent_cross_entropy() -> None:
    features = unit(4, 2, 6, seed=14)
    contrast = torch.cat([features[:, 0], features[:, 1]])  # [2B, D]
    logits = (contrast @ contrast.T / 0.5).fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(4, 8), torch.arange(0, 4)])
    expected = (0.5 / 0.07) * F.cross_entropy(logits, targets)
    torch.testing.assert_close(supcon(features, None, 0.5, 0.07), expected)


def test_supcon_three_views_with_labels_and_custom_base_temperature() -> None:
    labels = torch.tensor([3, 3, 1, 0])
    assert_matches_reference(unit(4, 3, 5, seed=15), labels, temperature=0.2, base_temperature=0.2)


def test_supcon_anchor_views_first_view_only() -> None:
    labels = torch.tensor([0, 1, 1, 0, 2])
    assert_matches_reference(unit(5, 2, 6, seed=16), labels, anchor_views=[0])
    assert_matches_reference(unit(5, 3, 6, seed=17), None, anchor_views=[2])
    assert_matches_reference(unit(5, 3, 6, seed=18), labels, anchor_views=[0, 2])


@pytest.mark.parametrize("drop", [False, True])
def test_supcon_single_sample_classes_in_both_drop_modes(drop: bool) -> None:
    # Classes 2 and 3 have one sample each: with one view their anchors have no positive.
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    features = unit(6, 1, 7, seed=19)
    assert_matches_reference(features, labels, drop=drop)
    assert_matches_reference(unit(6, 2, 7, seed=20), labels, anchor_views=[1], drop=drop)


def test_supcon_drop_modes_differ_by_the_anchor_count() -> None:
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    features = unit(6, 1, 7, seed=21)
    kept = supcon(features, labels)
    dropped = supcon(features, labels, drop_anchors_without_positives=True)
    torch.testing.assert_close(dropped, kept * 6 / 4)


@pytest.mark.parametrize("drop", [False, True])
def test_supcon_single_view_without_labels_is_zero_not_nan(drop: bool) -> None:
    assert_matches_reference(unit(5, 1, 4, seed=22), None, drop=drop)
    assert_matches_reference(unit(1, 1, 4, seed=23), None, drop=drop)
    assert_matches_reference(unit(1, 1, 4, seed=24), torch.tensor([7]), drop=drop)
    loss = supcon(unit(5, 1, 4, seed=22), None, drop_anchors_without_positives=drop)
    assert loss.item() == 0.0


def test_supcon_labels_none_equals_distinct_labels() -> None:
    features = unit(5, 2, 6, seed=25)
    torch.testing.assert_close(supcon(features), supcon(features, torch.arange(5)))


def test_supcon_gradient_is_finite_at_a_tiny_temperature() -> None:
    # Identical features make the self logit dominate: it must not leak into the max or produce inf.
    features = unit(4, 2, 5, seed=26, dtype=torch.float32)
    features[1] = features[0]
    features.requires_grad_(True)
    loss = supcon(features, torch.tensor([0, 1, 0, 1]), temperature=0.005, base_temperature=0.07)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    expected = supcon_reference(features.detach().double(), torch.tensor([0, 1, 0, 1]), 0.005, 0.07, None, False)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_supcon_dtypes(dtype: torch.dtype) -> None:
    features = unit(6, 2, 8, seed=27, dtype=dtype)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = supcon(features, labels)
    assert loss.dtype == dtype
    expected = supcon_reference(features.double(), labels, 0.1, 0.07, None, False)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


def test_supcon_default_scale_is_temperature_over_base_temperature() -> None:
    features = unit(4, 2, 6, seed=28)
    scaled = supcon(features, None, temperature=0.1, base_temperature=0.07)
    unscaled = supcon(features, None, temperature=0.1, base_temperature=0.1)
    torch.testing.assert_close(scaled, unscaled / 0.7)


def test_supcon_rejects_bad_shapes_and_views() -> None:
    with pytest.raises(ValueError, match=r"\[B, V, D\].*\(4, 6\)"):
        supcon(unit(4, 6, seed=0))
    with pytest.raises(ValueError, match=r"labels \[B\].*\(4, 1\)"):
        supcon(unit(4, 2, 6, seed=0), torch.zeros(4, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="anchor_views"):
        supcon(unit(4, 2, 6, seed=0), anchor_views=[2])
    with pytest.raises(ValueError, match="anchor_views"):
        supcon(unit(4, 2, 6, seed=0), anchor_views=[])
