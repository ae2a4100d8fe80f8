"""A run-scoped actor killed during a run (as ``kill -9`` of ``ray::ClusteringActor`` would): one error naming the
actor, the epoch and where the run resumes, the MLflow run FAILED with that reason, and no actor left behind.

Before, the workers' ActorDiedError surfaced as a 47-line Ray traceback and exit 1.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.runtime.launch import RunActorDied, pretrain
from pipeline.runtime.resources import actor_name
from pipeline.training.checkpoints import RUN_ID_FILE
from tests.support.actors import alive_actor_names, wait_until_gone
from tests.support.configs import tiny_overrides

pytestmark = pytest.mark.usefixtures("ray_session")


def kill_when_created(name: str, timeout: float = 120) -> threading.Thread:
    """Start a thread that force-kills the named actor as soon as it exists."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if name in alive_actor_names():
                ray.kill(ray.get_actor(name), no_restart=True)
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_a_killed_clustering_actor_stops_the_run_with_one_line_naming_it(tmp_path: Path, mlflow_uri: str) -> None:
    overrides = {
        "train.epochs": 3,
        "method.warmup_epochs": 1,
        "method.hierarchy": [12, 6, 3],
        "method.clustering.niter": 5,
        "method.clustering.nredo": 1,
        "ray.num_workers": 1,
        "ray.run_name": "actor-death",
    }
    config = with_overrides(load_config("hcsc_synthetic.yaml"), tiny_overrides(tmp_path, mlflow_uri, **overrides))
    name = actor_name("actor-death", "clustering")
    watcher = kill_when_created(name)
    with pytest.raises(RunActorDied) as error:
        pretrain(config)
    watcher.join(timeout=1)
    message = str(error.value)
    assert "\n" not in message
    # The actor is first needed when epoch 2 starts (epoch 1 is the warm-up), after epoch 1's checkpoint.
    assert message == (
        f"the run's clustering actor (Ray actor '{name}') died during epoch 2/3; running the same command again "
        f"resumes from epoch_0001 in {tmp_path / 'runs' / 'actor-death'}"
    )
    run_id = (tmp_path / "runs" / "actor-death" / RUN_ID_FILE).read_text().strip()
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == message
    assert wait_until_gone(name)
