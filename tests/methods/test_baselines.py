"""MoCo v2, SupCon and SimCLR methods: losses match the pure functions, queue and momentum semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config, with_overrides
from pipeline.losses import info_nce, supcon
from pipeline.methods import Batch, StepInfo, get_method, method_names
from pipeline.methods.common import cosine_momentum, momentum_update, scheduled_momentum
from pipeline.methods.context import resolve_batch_norm
from pipeline.methods.registry import params_names
from tests.support.methods import make_method


def make(method: str, **overrides: object):
    """Return a tiny method instance on one worker (5 classes, batch 8)."""
    return make_method(method, num_classes=5, batch_size=8, **overrides)


def images(batch: int = 8) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 16)


def batch_of(views: dict[str, torch.Tensor], labels: torch.Tensor) -> Batch:
    """Return a Batch of ``views`` whose dataset indices are 0..B-1."""
    return Batch(views, labels, torch.arange(labels.shape[0]))


def test_registry_lists_the_baselines() -> None:
    assert {"moco", "supcon", "simclr"} <= set(method_names())
    assert set(method_names()) == set(params_names())
    with pytest.raises(ValueError, match="unknown method 'byol2'"):
        get_method("byol2")


def test_moco_loss_uses_the_queue_before_this_steps_keys() -> None:
    method = make("moco", **{"method.queue_size": 16, "method.momentum": 0.5})
    views = {"query": images(), "key": images()}
    labels = torch.arange(8) % 5
    queue_before = method.queue.embeddings.clone()
    online_before = [p.detach().clone() for p in method.online.parameters()]
    target_before = [p.detach().clone() for p in method.momentum_encoder.parameters()]

    losses = method(batch_of(views, labels), StepInfo(epoch=0, global_step=0, total_steps=10))

    for online, target, param in zip(online_before, target_before, method.momentum_encoder.parameters(), strict=True):
        torch.testing.assert_close(param, 0.5 * target + 0.5 * online)
    assert torch.equal(method.queue.embeddings, queue_before)
    assert losses["loss"].requires_grad and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    assert any(p.grad is not None for p in method.online.parameters())

    method.on_step_end()
    assert method.queue.position == 8
    assert torch.equal(method.queue.embeddings[8:], queue_before[8:])
    assert torch.equal(method.queue.labels[:8], labels)


def test_moco_loss_equals_info_nce_of_its_embeddings() -> None:
    method = make("moco", **{"method.queue_size": 16, "model.batch_norm": "plain", "method.momentum": 1.0})
    method.eval()
    views = {"query": images(), "key": images()}
    with torch.no_grad():
        losses = method(batch_of(views, torch.zeros(8, dtype=torch.long)), StepInfo(0, 0, 10))
        query = F.normalize(method.online(views["query"]), dim=1)
        key = F.normalize(method.momentum_encoder(views["key"]), dim=1)
        expected = info_nce(query, key, method.queue.embeddings, 0.2)
    torch.testing.assert_close(losses["loss"], expected)


def test_momentum_update_and_schedule() -> None:
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    expected = [
        0.9 * t.detach() + 0.1 * o.detach() for o, t in zip(online.parameters(), target.parameters(), strict=True)
    ]
    momentum_update(online, target, 0.9)
    for param, value in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach(), value)
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)
    assert scheduled_momentum(0.99, "cosine", 50, 100) == pytest.approx(0.995)
    assert scheduled_momentum(0.99, "constant", 50, 100) == 0.99


def test_batch_norm_resolution() -> None:
    assert resolve_batch_norm("auto", 1, True) == "split"
    assert resolve_batch_norm("auto", 4, True) == "shuffle"
    assert resolve_batch_norm("auto", 4, False) == "plain"
    assert resolve_batch_norm("sync", 4, True) == "sync"
    with pytest.raises(ValueError, match="model.batch_norm = 'shuffle'"):
        resolve_batch_norm("shuffle", 2, False)
    assert make("moco").context.batch_norm == "split"
    moco = get_method("moco")
    with pytest.raises(ValueError, match="model.batch_norm = 'sync' needs GPU workers"):
        moco.validate(load_config(None, ["model.batch_norm=sync"]), 2)
    moco.validate(load_config(None, ["model.batch_norm=sync", "ray.gpus_per_worker=1"]), 2)
    assert make("supcon").context.batch_norm == "plain"


@pytest.mark.parametrize("name,uses_labels", [("supcon", True), ("simclr", False)])
def test_supcon_and_simclr_feed_view_stacked_features(name: str, uses_labels: bool) -> None:
    method = make(name)
    method.eval()
    views = {"view1": images(), "view2": images()}
    labels = torch.tensor([0, 1, 0, 1, 2, 2, 3, 4])
    with torch.no_grad():
        losses = method(batch_of(views, labels), StepInfo(0, 0, 10))
        first = F.normalize(method.encoder(views["view1"]), dim=1)
        second = F.normalize(method.encoder(views["view2"]), dim=1)
    params = method.params
    expected = supcon(
        torch.stack([first, second], dim=1),
        labels if uses_labels else None,
        temperature=params.temperature,
        base_temperature=params.base_temperature,
    )
    torch.testing.assert_close(losses["loss"], expected, rtol=1e-5, atol=1e-5)


def test_moco_rejects_queue_not_multiple_of_batch() -> None:
    config = with_overrides(load_config(None), {"method.queue_size": 100, "train.batch_size": 64})
    with pytest.raises(ValueError, match="queue length 100 must be a multiple of the global batch size 64"):
        get_method("moco").validate(config, world_size=1)
