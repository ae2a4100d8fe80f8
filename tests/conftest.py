"""Session-wide fixtures: one small local Ray for the whole test session, temporary MLflow stores."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.configs import Reference, tiny_config

ROOT = Path(__file__).resolve().parent.parent

# Ray Train's controller polls its workers every 2 s and starts a preemption watcher polling every 5 s: a
# tiny run waited ~6 s of its ~20 s on them to end. Set before Ray starts, so every Ray process (and the
# subprocess runs of the interrupt tests) inherits them; the runs and what they record are unchanged.
FAST_RAY_TRAIN = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
for _key, _value in FAST_RAY_TRAIN.items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """Start one local Ray (2 CPUs, small object store) for the session and shut it down at the end."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=True,
        # Workers import test plugins (tests.support.*) whatever directory pytest was started from.
        runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONPATH": str(ROOT), **FAST_RAY_TRAIN}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_reference(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """Return the tiny quickstart (2 workers, 2 epochs, pixel baseline, MLflow model, pictures) run once per session."""
    from pipeline.runtime.launch import pretrain

    folder = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    overrides = {"ray.run_name": "reference", "eval.pixel_baseline": True, "tracking.log_model": True}
    result = pretrain(tiny_config(folder, uri, **overrides, **{"eval.pictures": True}))
    return Reference(result, uri)


@pytest.fixture(scope="session")
def empty_mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return an empty sqlite MLflow store made once per session (making one runs MLflow's migrations: ~1.5 s)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture()
def mlflow_uri(tmp_path: Path, empty_mlflow_store: Path) -> str:
    """Return a fresh sqlite MLflow store in the test's temporary folder: a copy of the session's empty one."""
    store = tmp_path / "mlflow.db"
    shutil.copyfile(empty_mlflow_store, store)
    return f"sqlite:///{store}"
