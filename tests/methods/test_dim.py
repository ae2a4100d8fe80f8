"""Deep InfoMax method: views, local stage, loss equal to the pure estimator on its own encodings, two-view mode."""

from __future__ import annotations

import pytest
import torch

from pipeline.losses import dim_infonce, dim_jsd, local_global_scores
from pipeline.methods import Batch, StepInfo
from pipeline.methods.augmentations import ASCL_WEAK
from tests.support.methods import make_method


def make(**overrides: object):
    """Return a tiny DIM on one worker (batch 6, 16 px)."""
    return make_method("dim", num_classes=3, batch_size=6, **{"model.batch_norm": "plain", **overrides})


def batch_of(method) -> Batch:
    """Return random images for every declared view."""
    views = {name: torch.randn(6, 3, 16, 16) for name in method.views(method.context.config)}
    return Batch(views, torch.zeros(6, dtype=torch.long), torch.arange(6))


@pytest.mark.parametrize(("estimator", "reference"), [("infonce", dim_infonce), ("jsd", dim_jsd)])
def test_loss_is_the_estimator_on_the_global_and_local_encodings(estimator: str, reference) -> None:
    method = make(**{"method.estimator": estimator, "method.local_stage": "layer2"})
    method.eval()
    batch = batch_of(method)
    assert method.views(method.context.config) == {"view": ASCL_WEAK}
    with torch.no_grad():
        losses = method(batch, StepInfo(0, 0, 10))
        global_features, local_features = method.encode(batch.views["view"])
    # layer2 of a CIFAR-stem ResNet halves 16 px once: an 8x8 map, 64 positions.
    assert global_features.shape == (6, 128) and local_features.shape == (6, 128, 64)
    expected = reference(local_global_scores(global_features, local_features))
    assert losses["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert f"dim_{estimator}" in losses


def test_two_view_mode_scores_each_views_global_vector_against_the_other_views_map() -> None:
    method = make(**{"method.two_view": True})
    method.eval()
    batch = batch_of(method)
    assert set(method.views(method.context.config)) == {"view", "other"}
    with torch.no_grad():
        losses = method(batch, StepInfo(0, 0, 10))
        first, second = method.encode(batch.views["view"]), method.encode(batch.views["other"])
    expected = (
        dim_infonce(local_global_scores(first[0], second[1])) + dim_infonce(local_global_scores(second[0], first[1]))
    ) / 2
    assert losses["loss"] == pytest.approx(float(expected), rel=1e-5)


def test_training_steps_lower_the_loss_and_reach_every_part() -> None:
    method = make()
    batch = batch_of(method)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    first = None
    for _ in range(5):
        loss = method(batch, StepInfo(0, 0, 10))["loss"]
        optimizer.zero_grad()
        loss.backward()
        first = first if first is not None else float(loss.detach())
        for part in (method.backbone.layer1, method.global_head, method.local_head):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
        optimizer.step()
    assert float(loss.detach()) < first
