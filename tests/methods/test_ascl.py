"""ASCL and ASCL-BYOL methods: views, losses against the pure functions, queue and target statistics, config errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config, with_overrides
from pipeline.losses import ascl_byol, ascl_targets, info_nce, soft_info_nce
from pipeline.methods import Batch, StepInfo
from pipeline.methods.ascl.method import neighbour_agreement, target_class_precision
from pipeline.methods.augmentations import ASCL_WEAK, MOCO_V2
from tests.support.methods import make_method

ROOT = Path(__file__).resolve().parents[2]
LABELS = torch.tensor([0, 1, 0, 2, 1, 0, 2, 1])


def make(method: str, **overrides: object):
    """Return a tiny method on one worker (3 classes, batch 8) with plain batch norm unless overridden."""
    values: dict[str, object] = {"model.batch_norm": "plain"}
    if method == "ascl":
        values["method.queue_size"] = 16
    values.update(overrides)
    return make_method(method, num_classes=3, batch_size=8, **values)


def batch_of(method) -> Batch:
    """Return random images for the method's views with LABELS."""
    return Batch(
        {name: torch.randn(8, 3, 16, 16) for name in method.views(method.context.config)}, LABELS, torch.arange(8)
    )


def embeddings(method, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the normalised query (online, with the predictor if any) and key (momentum) embeddings."""
    query = method.online(batch.views["query"])
    if hasattr(method, "predictor"):
        query = method.predictor(query)
    return F.normalize(query, dim=1), F.normalize(method.momentum_encoder(batch.views["key"]), dim=1)


def frozen_step(name: str, **overrides: object) -> tuple[object, dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Return the method (eval mode, momentum 1), its losses on one batch, and that batch's query and key embeddings."""
    method = make(name, **{"method.momentum": 1.0, **overrides})
    method.eval()
    batch = batch_of(method)
    with torch.no_grad():
        losses = method(batch, StepInfo(0, 0, 10))
        query, key = embeddings(method, batch)
    return method, losses, query, key


@pytest.mark.parametrize("name", ["ascl", "ascl_byol"])
def test_views_are_strong_query_and_weak_key_unless_asked(name: str) -> None:
    method = make(name)
    assert method.views(method.context.config) == {"query": MOCO_V2, "key": ASCL_WEAK}
    strong = make(name, **{"method.key_augmentation": "strong"})
    assert strong.views(strong.context.config) == {"query": MOCO_V2, "key": MOCO_V2}


@pytest.mark.parametrize("mode", ["hard", "ahcl", "ascl"])
def test_ascl_loss_is_soft_info_nce_against_targets_from_the_key(mode: str) -> None:
    method, losses, query, key = frozen_step("ascl", **{"method.mode": mode, "method.num_neighbors": 3})
    queue = method.queue.embeddings
    targets, confidence = ascl_targets(key, queue, mode, 3, 0.05)
    expected = soft_info_nce(query, key, queue, targets, 0.1)
    torch.testing.assert_close(losses["loss"], expected)
    torch.testing.assert_close(losses["confidence"], confidence.mean())
    torch.testing.assert_close(losses["own_key_weight"], targets[:, 0].mean())
    assert set(losses) == {
        "loss",
        "soft_info_nce",
        "contrast_acc",
        "confidence",
        "own_key_weight",
        "neighbour_agreement",
        "target_class_precision",
    }


def test_ascl_without_neighbours_is_moco_info_nce() -> None:
    method, losses, query, key = frozen_step("ascl", **{"method.num_neighbors": 0})
    torch.testing.assert_close(losses["loss"], info_nce(query, key, method.queue.embeddings, 0.1))
    assert float(losses["own_key_weight"]) == 1.0


def test_ascl_queue_starts_unlabelled_and_is_filled_after_the_step() -> None:
    method = make("ascl")
    assert bool((method.queue.labels == -1).all())
    before = method.queue.embeddings.clone()
    losses = method(batch_of(method), StepInfo(0, 0, 10))
    assert torch.equal(method.queue.embeddings, before)
    # Unknown queue labels: no pair counts, so agreement reads 0 rather than chance.
    assert float(losses["neighbour_agreement"]) == 0.0
    losses["loss"].backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    method.on_step_end()
    assert torch.equal(method.queue.labels[:8], LABELS)


def test_neighbour_agreement_counts_known_pairs_only() -> None:
    relations = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.0, 0.2, 0.1, 0.8]])
    reference_labels = torch.tensor([1, 2, -1, 2])
    # Row 0 (label 1): top-2 are entries 0 (label 1, agrees) and 2 (unknown, ignored).
    # Row 1 (label 0): top-2 are entries 3 (label 2) and 1 (label 2): both disagree.
    value = neighbour_agreement(relations, torch.tensor([1, 0]), reference_labels, 2)
    torch.testing.assert_close(value, torch.tensor(1 / 3))
    unlabelled = neighbour_agreement(relations, torch.tensor([-1, -1]), reference_labels, 2)
    assert float(unlabelled) == 0.0


def test_target_class_precision_weighs_entries_by_their_target() -> None:
    targets = torch.tensor([[0.5, 0.3, 0.2, 0.0], [1.0, 0.0, 0.0, 0.0], [0.4, 0.1, 0.1, 0.4]])
    queue_labels = torch.tensor([1, 2, -1])
    # Row 0 (label 1): 0.3 of 0.5 on its class; row 1 has no queue weight; row 2 (label 2): 0.1 of 0.6.
    value = target_class_precision(targets, torch.tensor([1, 0, 2]), queue_labels)
    torch.testing.assert_close(value, torch.tensor(0.4 / 1.1))


def test_ascl_byol_loss_and_gradients() -> None:
    method = make("ascl_byol", **{"method.num_neighbors": 2, "method.momentum": 1.0})
    predictor = [type(layer).__name__ for layer in method.predictor]
    assert predictor == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert (method.predictor[0].in_features, method.predictor[0].out_features) == (128, 512)
    assert not hasattr(method, "queue")
    batch = batch_of(method)
    losses = method(batch, StepInfo(0, 0, 10))
    losses["loss"].backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    assert all(p.grad is not None for p in method.predictor.parameters())
    assert set(losses) == {"loss", "soft_byol", "confidence", "own_key_weight", "neighbour_agreement"}
    assert 0.0 < float(losses["own_key_weight"]) < 1.0  # two neighbours take some weight from the own key


def test_ascl_byol_loss_is_ascl_byol_of_its_embeddings() -> None:
    _, losses, prediction, key = frozen_step("ascl_byol", **{"method.num_neighbors": 2})
    torch.testing.assert_close(losses["loss"], ascl_byol(prediction, key, 2, 0.05))


def test_losses_stay_float32_under_bf16_autocast() -> None:
    for name in ("ascl", "ascl_byol"):
        method = make(name, **{"method.num_neighbors": 2})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses = method(batch_of(method), StepInfo(0, 0, 10))
        assert losses["loss"].dtype == torch.float32, name


def test_ascl_byol_without_neighbours_is_plain_byol() -> None:
    _, losses, prediction, key = frozen_step("ascl_byol", **{"method.num_neighbors": 0})
    torch.testing.assert_close(losses["loss"], (2 - 2 * (prediction * key).sum(dim=1)).mean())
    torch.testing.assert_close(losses["loss"], ascl_byol(prediction, key, 0, 0.05))


def test_ascl_byol_batch_norm_and_batch_checks() -> None:
    from pipeline.methods import get_method

    byol = get_method("ascl_byol")
    config = load_config(None, ["method.name=ascl_byol", "train.batch_size=4"])
    assert byol.batch_norm(config, 1) == "split"
    assert byol.batch_norm(config, 4) == "plain"
    assert byol.batch_norm(with_overrides(config, {"ray.gpus_per_worker": 1}), 4) == "sync"
    with pytest.raises(ValueError, match="does not shuffle keys"):
        byol.batch_norm(load_config(None, ["method.name=ascl_byol", "model.batch_norm=shuffle"]), 2)
    # The in-batch targets relate keys of the global batch: 4 images on 2 workers are enough, 2 are not.
    byol.validate(config, 2)
    small = with_overrides(config, {"train.batch_size": 2})
    with pytest.raises(ValueError, match="train.batch_size = 2: ascl_byol's in-batch targets need at least 3 images"):
        byol.validate(small, 1)
    byol.validate(with_overrides(small, {"method.num_neighbors": 0}), 2)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.mode=soft", "method.mode = 'soft'"),
        ("method.num_neighbors=2048", "num_neighbors = 2048 exceeds queue_size = 1024"),
    ],
)
def test_bad_mode_or_too_many_neighbours_is_one_clear_line(override: str, message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.pretrain", "--config", "ascl_synthetic.yaml", "--set", override],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
