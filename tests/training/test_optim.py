"""Optimisers: LARS against updates computed by hand, and which parameters build_optimizer adapts."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import OptimConfig
from pipeline.training.optim import LARS, build_optimizer


def _lars_by_hand(weight: list[float], grad: list[float], buffer: list[float] | None, lr: float) -> tuple[list, list]:
    """Return (new weight, new buffer) of one LARS step on a flat tensor: wd 0.1, trust 0.001, momentum 0.9.

    SimCLR's formulation: the learning rate enters the momentum buffer, v = 0.9 v + lr * ratio * (g + wd w).
    """
    update = [g + 0.1 * w for g, w in zip(grad, weight, strict=True)]
    weight_norm = math.sqrt(sum(w * w for w in weight))
    update_norm = math.sqrt(sum(u * u for u in update))
    ratio = 0.001 * weight_norm / update_norm if weight_norm > 0 and update_norm > 0 else 1.0
    update = [lr * u * ratio for u in update]
    buffer = update if buffer is None else [0.9 * b + u for b, u in zip(buffer, update, strict=True)]
    return [w - b for w, b in zip(weight, buffer, strict=True)], buffer


def test_two_steps_match_the_hand_computed_update_and_excluded_groups_are_plain_sgd() -> None:
    weight = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    bias = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = LARS(
        [{"params": [weight]}, {"params": [bias], "lars": False, "weight_decay": 0.0}],
        lr=2.0,
        momentum=0.9,
        weight_decay=0.1,
        trust_coefficient=0.001,
    )
    expected_weight, weight_buffer = [3.0, 0.0, 0.0, 4.0], None
    expected_bias, bias_buffer = 1.0, None
    for lr in (2.0, 0.5):
        for group in optimizer.param_groups:
            group["lr"] = lr
        weight.grad = torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=torch.float64)
        bias.grad = torch.tensor([0.5], dtype=torch.float64)
        optimizer.step()
        expected_weight, weight_buffer = _lars_by_hand(expected_weight, [0.5, 0.0, 0.0, 0.0], weight_buffer, lr)
        bias_buffer = lr * 0.5 if bias_buffer is None else 0.9 * bias_buffer + lr * 0.5
        expected_bias -= bias_buffer
        assert weight.flatten().tolist() == pytest.approx(expected_weight, rel=1e-12, abs=1e-15)
        assert bias.item() == pytest.approx(expected_bias, rel=1e-12)
        if lr == 2.0:
            # By hand: ||w|| = 5; g + 0.1 w = diag(0.8, 0.4), norm sqrt(0.8); ratio 0.001 * 5 / sqrt(0.8) = 0.00559017.
            assert weight.diagonal().tolist() == pytest.approx([3 - 2 * 0.8 * 0.00559017, 4 - 2 * 0.4 * 0.00559017])
            assert bias.item() == 0.0


def test_a_zero_weight_takes_the_plain_decayed_gradient() -> None:
    weight = nn.Parameter(torch.zeros(3, 2))
    optimizer = LARS([weight], lr=1.0, weight_decay=0.5)
    weight.grad = torch.ones(3, 2)
    optimizer.step()
    assert torch.equal(weight, -torch.ones(3, 2))


def test_build_optimizer_adapts_weights_and_leaves_biases_and_norms_out() -> None:
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    network(torch.zeros(1, 3, 5, 5))
    optimizer = build_optimizer(OptimConfig(name="lars", weight_decay=1e-6, trust_coefficient=0.002), network)
    adapted, excluded = optimizer.param_groups
    assert isinstance(optimizer, LARS)
    assert [tuple(p.shape) for p in adapted["params"]] == [(4, 3, 3, 3), (2, 36)]
    assert adapted["lars"] and adapted["weight_decay"] == 1e-6 and adapted["trust_coefficient"] == 0.002
    assert [tuple(p.shape) for p in excluded["params"]] == [(4,), (4,), (4,), (2,)]
    assert not excluded["lars"] and excluded["weight_decay"] == 0.0
