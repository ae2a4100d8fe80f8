"""HCSC: warm-up, losses against the pure functions, each epoch's hierarchy (sync, overlap, restart), config errors."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.clustering import Hierarchy, Level
from pipeline.config import ConfigError, load_config, with_overrides
from pipeline.data.build import build_source
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.losses import icsc, icsc_selection_probs, info_nce, pcsc, pcsc_negative_ids, pcsc_selection_probs
from pipeline.methods import Batch, EpochContext, StepInfo
from pipeline.methods.hcsc.method import Hcsc, Prototypes
from pipeline.runtime.launch import pretrain, validate
from tests.support.methods import make_method

NUM_TRAIN = 48
BATCH = 8


def make(**overrides: object) -> Hcsc:
    """Return a tiny HCSC (plain BN, queue 16, momentum 1 so that the key encoder stays put) on 48 images."""
    values: dict[str, object] = {
        "model.batch_norm": "plain",
        "method.queue_size": 16,
        "method.momentum": 1.0,
        "method.hierarchy": [6, 3, 2],
        "method.warmup_epochs": 2,
        "method.clustering.niter": 5,
        "method.clustering.nredo": 1,
        "data.synthetic.num_train": NUM_TRAIN,
        "data.num_workers": 0,
        "train.epochs": 6,
    }
    values.update(overrides)
    method = make_method("hcsc", num_classes=20, batch_size=BATCH, **values)
    assert isinstance(method, Hcsc)
    return method


def hand_made_hierarchy(dim: int = 128) -> Hierarchy:
    """Return a random 6-3-2 hierarchy over NUM_TRAIN images with composed assignments."""
    rng = np.random.default_rng(0)
    assignments = rng.integers(0, 6, size=NUM_TRAIN)
    parents = [np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1])]
    levels = []
    for index, size in enumerate([6, 3, 2]):
        centroids = rng.standard_normal((size, dim)).astype(np.float32)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        concentration = rng.uniform(0.1, 0.3, size).astype(np.float32)
        parent = parents[index] if index < 2 else None
        levels.append(Level(centroids, concentration, assignments, parent))
        if parent is not None:
            assignments = parent[assignments]
    return Hierarchy(tuple(levels), "cpu", 0.0)


def batch_for(method: Hcsc) -> Batch:
    """Return random images for both views of dataset images 3, 9, 15, ..."""
    views = {name: torch.randn(BATCH, 3, 16, 16) for name in method.views(method.context.config)}
    return Batch(views, torch.zeros(BATCH, dtype=torch.long), torch.arange(BATCH) * 6 + 3)


def frozen_losses(method: Hcsc, batch: Batch, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Return the method's losses (eval mode, seeded draws) and the query and key embeddings of ``batch``."""
    method.eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        losses = method(batch, StepInfo(3, 0, 10))
        query = F.normalize(method.online(batch.views["query"]), dim=1)
        key = F.normalize(method.momentum_encoder(batch.views["key"]), dim=1)
    return losses, query, key


def replayed_icsc_masks(
    prototypes: Prototypes, queue: torch.Tensor, clusters: list[torch.Tensor], seed: int
) -> list[torch.Tensor]:
    """Return the ICSC masks a step seeded with ``seed`` draws first, one per level, drawn again here."""
    torch.manual_seed(seed)
    return [
        torch.bernoulli(
            icsc_selection_probs(
                queue, prototypes.centroids[level], prototypes.concentration[level], clusters[level]
            ).clamp(0, 0.999)
        )
        for level in range(prototypes.num_levels)
    ]


def test_warm_up_epochs_are_moco_v2() -> None:
    method = make()
    batch = batch_for(method)
    losses, query, key = frozen_losses(method, batch, seed=0)
    expected = info_nce(query, key, method.queue.embeddings, method.params.temperature)
    assert losses["loss"] == pytest.approx(float(expected), rel=1e-5)
    assert "prototype_loss" not in losses


def test_prototypes_hold_each_level_and_the_similarity_to_the_level_above() -> None:
    hierarchy = hand_made_hierarchy()
    prototypes = Prototypes.from_hierarchy(hierarchy, torch.device("cpu"))
    assert prototypes.num_levels == 3 and len(prototypes.similarity) == 2
    torch.testing.assert_close(
        prototypes.similarity[0], torch.from_numpy(hierarchy.levels[0].centroids @ hierarchy.levels[1].centroids.T)
    )
    assert prototypes.assignments[2].dtype == torch.long


def test_selection_off_is_one_infonce_plus_the_mean_prototype_loss_over_levels() -> None:
    method = make(**{"method.instance_selection": False, "method.prototype_selection": False})
    method.prototypes = Prototypes.from_hierarchy(hand_made_hierarchy(), torch.device("cpu"))
    batch = batch_for(method)
    losses, query, key = frozen_losses(method, batch, seed=0)
    queue = method.queue.embeddings
    instance = icsc(query, key, queue, None, method.params.temperature)
    prototypes = method.prototypes
    levels = []
    for level in range(3):
        positives = prototypes.assignments[level][batch.indices]
        negatives = pcsc_negative_ids(positives, prototypes.centroids[level].shape[0])
        levels.append(pcsc(query, prototypes.centroids[level], prototypes.concentration[level], positives, negatives))
    assert losses["instance_loss"] == pytest.approx(float(instance), rel=1e-5)
    assert losses["prototype_loss"] == pytest.approx(float(torch.stack(levels).mean()), rel=1e-5)
    assert losses["loss"] == pytest.approx(float(instance + torch.stack(levels).mean()), rel=1e-5)
    assert "icsc_kept" not in losses and "pcsc_kept" not in losses


def test_selection_on_sums_masked_instance_losses_and_averages_prototype_losses() -> None:
    method = make()
    method.prototypes = Prototypes.from_hierarchy(hand_made_hierarchy(), torch.device("cpu"))
    batch = batch_for(method)
    losses, query, key = frozen_losses(method, batch, seed=5)
    prototypes, queue, temperature = method.prototypes, method.queue.embeddings, method.params.temperature
    clusters = [assignments[batch.indices] for assignments in prototypes.assignments]
    # The same draws, in the method's order: one ICSC mask per level, then one PCSC mask per level below the top.
    masks = replayed_icsc_masks(prototypes, queue, clusters, seed=5)
    levels, kept = [], []
    for level in range(3):
        negatives = pcsc_negative_ids(clusters[level], prototypes.centroids[level].shape[0])
        mask = None
        if level < 2:
            probabilities = pcsc_selection_probs(
                prototypes.similarity[level], prototypes.concentration[level + 1], clusters[level + 1], negatives
            )
            mask = torch.bernoulli(probabilities.clamp(1e-4, 0.999))
            kept.append(mask.flatten())
        levels.append(
            pcsc(query, prototypes.centroids[level], prototypes.concentration[level], clusters[level], negatives, mask)
        )
    instance = icsc(query, key, queue, masks, temperature)
    assert float(instance) > 2.5 * float(info_nce(query, key, queue, temperature)), "three levels are summed"
    assert losses["instance_loss"] == pytest.approx(float(instance), rel=1e-5)
    assert losses["prototype_loss"] == pytest.approx(float(torch.stack(levels).mean()), rel=1e-5)
    assert losses["icsc_kept"] == pytest.approx(float(torch.stack([m.mean() for m in masks]).mean()))
    assert losses["pcsc_kept"] == pytest.approx(float(torch.cat(kept).mean()))
    assert 0 < float(losses["icsc_kept"]) < 1


class InProcessActor:
    """The real ClusteringActor behind Ray-like ``.remote`` handles, recording every call."""

    def __init__(self, method: Hcsc) -> None:
        self.actor = Hcsc.resources(method.context.config)["clustering"]
        self.actor = self.actor.actor_class(*self.actor.args, **self.actor.kwargs)
        self.calls: list[tuple[str, int]] = []
        for name in ("submit_weights", "submit_features", "result"):
            setattr(self, name, types.SimpleNamespace(remote=self._recorder(name)))

    def _recorder(self, name: str):
        def call(key: int, *args: object) -> object:
            self.calls.append((name, key))
            return getattr(self.actor, name)(key, *args)

        return call


@pytest.fixture()
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``ray.get`` and ``ray.put`` in the method identity functions (the in-process actor returns values).

    HCSC imports Ray where it uses it, so the stand-in takes Ray's place in ``sys.modules`` for the test.
    """
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(get=lambda value: value, put=lambda value: value))


def epoch_context(method: Hcsc, epoch: int, actor: InProcessActor) -> EpochContext:
    """Return a one-worker epoch context over the 48 training images."""
    data = method.context.config.data
    source = build_source(data, "train", transform=build_view(EVAL_VIEW, data))
    loader = torch.utils.data.DataLoader(source, batch_size=16)
    return EpochContext(epoch, torch.device("cpu"), 0, 1, NUM_TRAIN, loader, {"clustering": actor})


@pytest.mark.usefixtures("no_ray")
@pytest.mark.parametrize("where", ["actor", "workers"])
def test_synchronous_epochs_train_with_the_hierarchy_of_the_weights_they_start_from(where: str) -> None:
    method = make(**{"method.clustering.where": where})
    actor = InProcessActor(method)
    submit = "submit_weights" if where == "actor" else "submit_features"
    for epoch in range(4):
        method.on_epoch_start(epoch_context(method, epoch, actor))
        report = method.epoch_report()
        if epoch < 2:
            assert method.prototypes is None and report.metrics == {}
            continue
        assert method.prototypes is not None and method.prototypes.num_levels == 3
        assert report.metrics["clustering/staleness_epochs"] == 0
        assert report.metrics["clustering/level0/clusters"] == 6 and "clustering/level2/nmi_class" in report.metrics
        assert report.metrics["clustering/wait_s"] >= report.metrics["clustering/kmeans_s"]
        assert list(report.artifacts) == [f"hierarchy/epoch_{epoch + 1:04d}.json"]
    assert actor.calls == [(submit, 2), ("result", 2), (submit, 3), ("result", 3)]


@pytest.mark.usefixtures("no_ray")
def test_overlap_trains_one_epoch_behind_and_a_restart_rebuilds_from_its_weights() -> None:
    method = make(**{"method.clustering.overlap": True})
    actor = InProcessActor(method)
    for epoch in range(4):
        method.on_epoch_start(epoch_context(method, epoch, actor))
        staleness = method.epoch_report().metrics.get("clustering/staleness_epochs")
        assert staleness == (None if epoch < 2 else 1.0)
    # The last warm-up epoch starts the first job, so the first HCSC epoch reads it without waiting for a new one.
    assert actor.calls == [
        ("submit_weights", 1),
        ("submit_weights", 2),
        ("result", 1),
        ("submit_weights", 3),
        ("result", 2),
    ]
    restarted = make(**{"method.clustering.overlap": True})  # a new worker process after a failure
    restarted.on_epoch_start(epoch_context(restarted, 4, actor))
    assert actor.calls[-2:] == [("submit_weights", 4), ("result", 4)]
    assert restarted.epoch_report().metrics["clustering/staleness_epochs"] == 0


def test_workers_send_embeddings_of_every_image_in_index_order(no_ray: None) -> None:
    method = make(**{"method.clustering.where": "workers"})
    actor = InProcessActor(method)
    sent: list[np.ndarray] = []
    actor.actor.submit_features = lambda key, features: sent.append(features)  # type: ignore[method-assign]
    method._submit(epoch_context(method, 2, actor), actor, 2)
    data = method.context.config.data
    source = build_source(data, "train", transform=build_view(EVAL_VIEW, data))
    method.momentum_encoder.eval()
    with torch.no_grad():
        expected = F.normalize(method.momentum_encoder(torch.stack([source[i][0] for i in range(NUM_TRAIN)])), dim=1)
    assert sent[0].shape == (NUM_TRAIN, 128)
    np.testing.assert_allclose(sent[0], expected.numpy(), atol=1e-5)


def hcsc_config(tmp_path: Path, **overrides: object):
    """Return the synthetic HCSC config with a tiny data set and a store under ``tmp_path``."""
    values: dict[str, object] = {
        "data.synthetic.num_train": 100,
        "data.synthetic.num_test": 20,
        "eval.pixel_baseline": False,
        "ray.storage_path": str(tmp_path / "runs"),
        "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "train.batch_size": 16,
        "method.queue_size": 64,
    }
    values.update(overrides)
    return with_overrides(load_config("hcsc_synthetic.yaml"), values)


def test_a_hierarchy_too_large_for_the_data_stops_before_anything_is_recorded(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"method.hierarchy = \[200, 60, 20\] does not fit the 100 training images"):
        pretrain(hcsc_config(tmp_path))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "runs").exists()


def test_auto_scale_shrinks_the_hierarchy_and_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = hcsc_config(tmp_path, **{"method.hierarchy_scale": "auto"})
    Hcsc.validate_data(config, 100)
    assert "hierarchy [200, 60, 20] -> [10, 3, 1] for 100 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method.warmup_epochs": 8}, "method.warmup_epochs = 8 leaves no HCSC epoch in train.epochs = 8"),
        ({"method.hierarchy": [20, 30]}, "method.hierarchy.*levels must shrink"),
        ({"method.clustering.where": "driver"}, "method.clustering.where"),
    ],
)
def test_bad_hcsc_settings_name_their_key(tmp_path: Path, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(hcsc_config(tmp_path, **overrides))
