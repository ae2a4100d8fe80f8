"""``--local``: the training loop in the calling process, against the same run on Ray Train at world size 1."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pipeline.config import ConfigError
from pipeline.runtime.launch import PretrainResult, RunInterrupted, RunStopped, pretrain
from pipeline.training.checkpoints import latest_checkpoint, load_checkpoint
from tests.support.configs import tiny_config, tiny_overrides

ROOT = Path(__file__).resolve().parent.parent

ONE_WORKER = {"ray.num_workers": 1, "eval.linear.enabled": False}
# Wall-clock figures differ between any two runs; everything else a run records must not.
TIMING_PREFIX = "perf/"


@pytest.fixture(scope="module")
def ray_world_one(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[PretrainResult, Path, str]:
    """Return the tiny MoCo run on Ray Train with one worker, its storage folder and its MLflow store."""
    folder = tmp_path_factory.mktemp("ray_world_one")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return pretrain(tiny_config(folder, uri, **ONE_WORKER, **{"ray.run_name": "on_ray"})), folder, uri


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """Run the test's local loop on one thread, as a Ray worker with one CPU does (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_same_state(actual: dict, expected: dict) -> None:
    """Assert two checkpoints hold bit-identical method tensors, optimiser state and non-timing metrics."""
    assert actual["epoch"] == expected["epoch"] and actual["global_step"] == expected["global_step"]
    assert actual["method"].keys() == expected["method"].keys()
    for key, tensor in expected["method"].items():
        assert torch.equal(actual["method"][key], tensor), key
    for index, state in expected["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(actual["optimizer"]["state"][index][name], tensor), (index, name)
    metrics = {key: value for key, value in expected["metrics"].items() if not key.startswith(TIMING_PREFIX)}
    assert {key: actual["metrics"][key] for key in metrics} == metrics


def _history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    """Return a metric's (step, value) history in step order."""
    return sorted((point.step, point.value) for point in MlflowClient(uri).get_metric_history(run_id, metric))


@pytest.mark.usefixtures("one_thread")
def test_a_local_run_is_bit_identical_to_the_ray_run(
    ray_world_one: tuple[PretrainResult, Path, str], tmp_path: Path
) -> None:
    on_ray, _, ray_uri = ray_world_one
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    local = pretrain(tiny_config(tmp_path, uri, **ONE_WORKER, **{"ray.run_name": "in_process"}), local=True)

    _assert_same_state(load_checkpoint(Path(local.checkpoint_path)), load_checkpoint(Path(on_ray.checkpoint_path)))
    for metric in ("train/loss", "train/lr", "knn/top1", "final/knn/top1"):
        assert _history(uri, local.mlflow_run_id, metric) == _history(ray_uri, on_ray.mlflow_run_id, metric), metric
    run = MlflowClient(uri).get_run(local.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["autocast"] == "off"
    assert run.data.params["ray.num_workers"] == "1"
    # The local mode keeps the newest two epochs, as Ray Train's CheckpointConfig(num_to_keep=2) does.
    assert sorted(folder.name for folder in (tmp_path / "runs" / "in_process").glob("epoch_*")) == [
        "epoch_0001",
        "epoch_0002",
    ]


@pytest.mark.usefixtures("one_thread")
def test_a_local_run_stopped_by_a_failure_resumes_on_ray_exactly(
    ray_world_one: tuple[PretrainResult, Path, str], tmp_path: Path, mlflow_uri: str
) -> None:
    on_ray, _, _ = ray_world_one
    stopped = tiny_config(
        tmp_path, mlflow_uri, **ONE_WORKER, **{"ray.run_name": "crossing", "train.inject_failure_at_epoch": 2}
    )
    with pytest.raises(RuntimeError, match="injected failure"):
        pretrain(stopped, local=True)
    run_dir = tmp_path / "runs" / "crossing"
    assert load_checkpoint(latest_checkpoint(run_dir))["epoch"] == 1
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"

    resumed = pretrain(stopped)

    assert resumed.mlflow_run_id == run_id
    _assert_same_state(load_checkpoint(Path(resumed.checkpoint_path)), load_checkpoint(Path(on_ray.checkpoint_path)))
    assert [step for step, _ in _history(mlflow_uri, run_id, "train/loss")] == [0, 1]
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FINISHED"


def test_a_run_resumed_under_other_numerics_keeps_both_in_its_autocast_tag(tmp_path: Path, mlflow_uri: str) -> None:
    overrides = {**ONE_WORKER, "ray.run_name": "numerics", "train.inject_failure_at_epoch": 2, "train.amp": "off"}
    with pytest.raises(RuntimeError, match="injected failure"):
        pretrain(tiny_config(tmp_path, mlflow_uri, **overrides), local=True)
    run_id = (tmp_path / "runs" / "numerics" / "mlflow_run_id").read_text().strip()
    assert MlflowClient(mlflow_uri).get_run(run_id).data.tags["autocast"] == "off"

    resumed = pretrain(tiny_config(tmp_path, mlflow_uri, **{**overrides, "train.amp": "bf16"}), local=True)

    assert resumed.mlflow_run_id == run_id
    assert MlflowClient(mlflow_uri).get_run(run_id).data.tags["autocast"] == "off, then bfloat16"


def test_a_local_run_refuses_several_workers(tmp_path: Path, mlflow_uri: str) -> None:
    with pytest.raises(ConfigError, match="ray.num_workers = 2"):
        pretrain(tiny_config(tmp_path, mlflow_uri), local=True)
    assert not (tmp_path / "runs").exists()


def test_the_command_line_trains_locally_without_ray(tmp_path: Path, mlflow_uri: str) -> None:
    arguments = [sys.executable, "-m", "pipeline.pretrain", "--config", "quickstart.yaml", "--local"]
    overrides = tiny_overrides(tmp_path, mlflow_uri, **ONE_WORKER, **{"ray.run_name": "cli"})
    for key, value in overrides.items():
        arguments += ["--set", f"{key}={value}"]
    # A cluster address nobody answers: the run can only finish if it never starts or joins Ray.
    environment = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}

    finished = subprocess.run(arguments, capture_output=True, text=True, cwd=ROOT, timeout=300, env=environment)

    assert finished.returncode == 0, finished.stderr
    assert "epoch 2/2 loss" in finished.stdout
    assert "=== pretraining finished ===" in finished.stdout
    state = load_checkpoint(latest_checkpoint(tmp_path / "runs" / "cli"))
    assert state["epoch"] == 2


def test_a_steered_local_run_hands_each_epoch_over_and_ends_where_its_hook_says(
    tmp_path: Path, mlflow_uri: str
) -> None:
    seen: list[dict[str, float]] = []

    def hook(metrics: dict[str, float]) -> bool:
        seen.append(metrics)
        return False

    config = tiny_config(tmp_path, mlflow_uri, **ONE_WORKER, **{"ray.run_name": "steered", "train.epochs": 3})
    with pytest.raises(RunInterrupted, match="1/3 epochs") as ended:
        pretrain(config, local=True, on_epoch=hook)
    assert not isinstance(ended.value, RunStopped)  # nobody asked it to stop early: it resumes as interrupted
    assert [metrics["epoch"] for metrics in seen] == [1]
    run_dir = tmp_path / "runs" / "steered"
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["epoch"] == 1 and seen[0]["train/loss"] == state["metrics"]["train/loss"]
    recorded = MlflowClient(mlflow_uri).get_run(ended.value.mlflow_run_id)
    assert recorded.info.status == "KILLED" and "stopped_early" not in recorded.data.tags
    assert [step for step, _ in _history(mlflow_uri, recorded.info.run_id, "train/loss")] == [0]
