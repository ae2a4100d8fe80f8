"""The clustering actor's logic, in-process: embedding from weights, clustering given features, keys, failures."""

from __future__ import annotations

import functools
import threading
import time

import numpy as np
import pytest
import torch

from pipeline.clustering import hierarchical_kmeans
from pipeline.clustering.actor import KEPT_RESULTS, ClusteringActor
from pipeline.config import load_config, with_overrides
from pipeline.data.build import build_source
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.evaluation.monitor import extract_features
from pipeline.methods.common import build_encoder
from pipeline.runtime.progress import RunRelay

NUM_TRAIN = 120


def make_actor(progress: object | None = None, **settings: object) -> ClusteringActor:
    """Return an actor for 120 synthetic images, a width-4 encoder and a 12-6-3 hierarchy (lines to ``progress``)."""
    overrides: dict[str, object] = {
        "method.name": "hcsc",
        "data.synthetic.num_train": NUM_TRAIN,
        "data.image_size": 16,
        "data.num_workers": 0,
        "model.width": 4,
        "model.cifar_stem": True,
        "method.clustering.niter": 5,
        "method.clustering.nredo": 1,
        "method.clustering.batch_size": 50,
    }
    overrides.update({f"method.clustering.{key}": value for key, value in settings.items()})
    config = with_overrides(load_config(None), overrides)
    factory = functools.partial(build_encoder, config.model, "plain")
    return ClusteringActor(config.data, factory, [12, 6, 3], "off", 0.2, config.method.clustering, progress)


def test_weights_are_embedded_on_the_actor_and_clustered_like_the_pure_function() -> None:
    actor = make_actor()
    torch.manual_seed(0)
    encoder = build_encoder(actor.network_factory.args[0], "plain")
    actor.submit_weights(3, encoder.state_dict())
    result = actor.result(3)

    source = build_source(actor.data, "train", transform=build_view(EVAL_VIEW, actor.data))
    loader = torch.utils.data.DataLoader(source, batch_size=50)
    features, indices = extract_features(encoder, loader, torch.device("cpu"))
    expected = hierarchical_kmeans(features[indices.argsort()].numpy(), [12, 6, 3], niter=5, nredo=1, seed=0)
    assert result.key == 3 and result.hierarchy.sizes == [12, 6, 3]
    for got, want in zip(result.hierarchy.levels, expected.levels, strict=True):
        np.testing.assert_array_equal(got.assignments, want.assignments)
        np.testing.assert_allclose(got.centroids, want.centroids, atol=1e-5)
    assert result.extract_seconds > 0 and result.seconds >= result.hierarchy.seconds
    assert result.statistics["level0/non_empty"] == len(np.unique(result.hierarchy.levels[0].assignments))
    assert 0 <= result.statistics["level2/nmi_superclass"] <= 1


def test_embedding_says_progress_through_the_relay_ending_at_the_training_set() -> None:
    relay = RunRelay()  # the run's relay as an object of this process: the driver would take and print its lines
    actor = make_actor(relay)
    actor.submit_weights(3, build_encoder(actor.network_factory.args[0], "plain").state_dict())
    actor.result(3)
    lines = relay.take()
    assert lines[-1].startswith(f"  clustering after 3 epochs: embedded {NUM_TRAIN}/{NUM_TRAIN} images, ")
    assert " img/s, done in " in lines[-1]


def test_features_from_the_workers_are_clustered_as_given() -> None:
    actor = make_actor()
    points = np.random.default_rng(0).standard_normal((NUM_TRAIN, 8)).astype(np.float32)
    actor.submit_features(5, points)
    result = actor.result(5)
    expected = hierarchical_kmeans(points, [12, 6, 3], niter=5, nredo=1, seed=0)
    np.testing.assert_array_equal(result.hierarchy.levels[0].assignments, expected.levels[0].assignments)
    assert result.extract_seconds < 1.0


def test_a_waiting_rank_gets_the_result_submitted_after_it_asked() -> None:
    actor = make_actor()
    received: list[int] = []
    waiter = threading.Thread(target=lambda: received.append(actor.result(7).key))
    waiter.start()
    time.sleep(0.2)
    assert not received, "result() returned before anything was submitted"
    actor.submit_features(7, np.random.default_rng(1).standard_normal((NUM_TRAIN, 8)).astype(np.float32))
    waiter.join(timeout=30)
    assert received == [7]


def test_a_failed_job_reaches_the_ranks_and_a_missing_key_times_out() -> None:
    actor = make_actor(timeout_s=0.3)
    actor.submit_features(1, np.zeros((5, 8), dtype=np.float32))  # 5 points cannot fill 12 clusters
    with pytest.raises(RuntimeError, match="(?s)clustering for key 1 failed in the actor.*only 5 points"):
        actor.result(1)
    with pytest.raises(TimeoutError, match="no hierarchy for key 2 after 0 s.*method.clustering.timeout_s"):
        actor.result(2)


def test_only_the_newest_results_are_kept() -> None:
    actor = make_actor(timeout_s=0.3)
    points = np.random.default_rng(2).standard_normal((NUM_TRAIN, 8)).astype(np.float32)
    for key in range(KEPT_RESULTS + 2):
        actor.submit_features(key, points)
    assert actor.result(KEPT_RESULTS + 1).key == KEPT_RESULTS + 1
    assert actor.result(2).key == 2
    with pytest.raises(TimeoutError):
        actor.result(0)
