"""Interrupt a run at several points (SIGINT, SIGTERM, SIGKILL of the driver), rerun, get the uninterrupted result.

Each interrupted attempt is a real ``python -m pipeline.pretrain`` process, with its own local Ray or (the last
two, whose subject is the run folder, not Ray) ``--local`` on one thread like a one-CPU Ray worker; the
``PIPELINE_TEST_PAUSE_AT`` hook stops rank 0 at a named point so the signal lands exactly there.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from pipeline.runtime.launch import pretrain
from pipeline.training.checkpoints import CHECKPOINT_FILE, load_checkpoint
from pipeline.training.faults import PAUSE_ENV, pause_marker
from tests.support.configs import Reference, tiny_config, tiny_overrides

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 3
HISTORY = ("train/loss", "train/info_nce", "train/lr", "knn/top1")


class Attempt:
    """One ``python -m pipeline.pretrain`` in its own process session, optionally pausing at ``pause``."""

    def __init__(self, overrides: dict[str, object], pause: str | None, log: Path, local: bool = False) -> None:
        arguments = [sys.executable, "-m", "pipeline.pretrain", "--config", "quickstart.yaml"]
        for key, value in overrides.items():
            arguments += ["--set", f"{key}={value}"]
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        env.pop(PAUSE_ENV, None)
        env.pop("RAY_ADDRESS", None)
        if local:
            # One thread, as Ray gives a one-CPU worker: the local loop then computes what the Ray worker does.
            arguments.append("--local")
            env["OMP_NUM_THREADS"] = "1"
        if pause:
            env[PAUSE_ENV] = pause
        self.log = log
        self.process = subprocess.Popen(
            arguments, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_for(self, marker: Path, timeout: float = 240) -> None:
        """Return once ``marker`` exists; fail with the attempt's output if it ends or times out first."""
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert self.process.poll() is None, f"attempt ended before {marker.name}:\n{self.log.read_text()}"
            assert time.monotonic() < deadline, f"no {marker.name} after {timeout}s:\n{self.log.read_text()}"
            time.sleep(0.2)

    def finish(self, signum: int | None = None, timeout: float = 240) -> tuple[int, str]:
        """Return (exit code, output) after sending ``signum`` to the driver (if any) and ending its session."""
        if signum is not None:
            os.kill(self.process.pid, signum)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            # Ray's helper processes outlive a SIGKILLed driver; they share its process group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return code, self.log.read_text()


def history(client: MlflowClient, run_id: str, metric: str) -> list[tuple[int, float]]:
    """Return the (step, value) pairs of a metric, sorted by step."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def test_interrupts_at_any_point_resume_to_the_uninterrupted_result(tmp_path: Path, mlflow_uri: str) -> None:
    settings = {"ray.num_workers": 1, "train.epochs": EPOCHS}
    # The uninterrupted run in this process on one thread: what a one-CPU Ray worker computes (test_local_mode).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = pretrain(tiny_config(tmp_path, mlflow_uri, **settings, **{"ray.run_name": "reference"}), local=True)
    finally:
        torch.set_num_threads(threads)

    overrides = tiny_overrides(tmp_path, mlflow_uri, **settings, **{"ray.run_name": "chain"})
    run_dir = tmp_path / "runs" / "chain"
    client = MlflowClient(mlflow_uri)

    def run_id() -> str:
        return (run_dir / "mlflow_run_id").read_text().strip()

    # 1. SIGINT before the first checkpoint: exit 130 with a closing line, run KILLED, nothing saved.
    attempt = Attempt(overrides, "epoch_start:1", tmp_path / "attempt1.log")
    attempt.wait_for(pause_marker(run_dir, "epoch_start", 1))
    code, output = attempt.finish(signal.SIGINT)
    assert code == 130, output
    assert "interrupted: run 'chain' interrupted with 0/3 epochs saved" in output and "resume with: " in output
    assert client.get_run(run_id()).info.status == "KILLED"
    assert not (run_dir / "epoch_0001").exists()

    # 2. SIGKILL right after the first checkpoint, before Ray registers it (its snapshot is removed).
    attempt = Attempt(overrides, "after_report:1", tmp_path / "attempt2.log")
    attempt.wait_for(pause_marker(run_dir, "after_report", 1))
    attempt.finish(signal.SIGKILL)
    for snapshot in run_dir.glob("checkpoint_manager_snapshot.json*"):
        snapshot.unlink()

    # 3. SIGTERM mid-epoch 2: the attempt resumed from the folder on disk, not from epoch 0.
    attempt = Attempt(overrides, "mid_epoch:2", tmp_path / "attempt3.log")
    attempt.wait_for(pause_marker(run_dir, "mid_epoch", 2))
    code, output = attempt.finish(signal.SIGTERM)
    assert code == 130, output
    assert "resuming run 'chain' from" in output and "epoch_0001 (1/3 epochs done)" in output
    assert client.get_run(run_id()).info.status == "KILLED"

    # 4. SIGKILL during the kNN pass of epoch 3 (epoch 2's checkpoint is written by then), in one process.
    attempt = Attempt(overrides, "knn:3", tmp_path / "attempt4.log", local=True)
    attempt.wait_for(pause_marker(run_dir, "knn", 3))
    attempt.finish(signal.SIGKILL)
    assert (run_dir / "epoch_0002" / CHECKPOINT_FILE).is_file() and not (run_dir / "epoch_0003").exists()

    # 5. A torn latest checkpoint (as a copy cut short leaves it): the run goes back to the previous one.
    torn = run_dir / "epoch_0002" / CHECKPOINT_FILE
    torn.write_bytes(torn.read_bytes()[:1000])
    code, output = Attempt(overrides, None, tmp_path / "attempt5.log", local=True).finish()
    assert code == 0, output
    assert "checkpoint epoch_0002 is unusable (checkpoint.pt has 1000 bytes of" in output
    assert "resuming from epoch_0001 instead" in output

    final = load_checkpoint(run_dir / "epoch_0003")
    expected = load_checkpoint(Path(reference.checkpoint_path))
    assert final["epoch"] == expected["epoch"] == EPOCHS and final["global_step"] == expected["global_step"]
    for key, value in expected["method"].items():
        assert torch.equal(final["method"][key], value), key
    assert final["metrics"]["knn/top1"] == expected["metrics"]["knn/top1"]
    run = client.get_run(run_id())
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id], "tags.run_name = 'chain'")) == 1
    for metric in HISTORY:
        assert history(client, run_id(), metric) == history(client, reference.mlflow_run_id, metric), metric


def test_a_worker_killed_mid_epoch_is_restarted_to_the_same_result(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, tiny_reference: Reference
) -> None:
    reference = tiny_reference.result
    monkeypatch.setenv(PAUSE_ENV, "mid_epoch:2")
    config = tiny_config(tmp_path, mlflow_uri, **{"ray.run_name": "killed", "ray.max_failures": 1})
    marker = pause_marker(tmp_path / "runs" / "killed", "mid_epoch", 2)
    outcome: dict[str, object] = {}
    runner = threading.Thread(target=lambda: outcome.update(result=pretrain(config)), daemon=True)
    runner.start()
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert runner.is_alive() and time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.2)
    os.kill(int(marker.read_text()), signal.SIGKILL)
    runner.join(timeout=300)
    result = outcome["result"]

    final, expected = load_checkpoint(Path(result.checkpoint_path)), load_checkpoint(Path(reference.checkpoint_path))
    for key, value in expected["method"].items():
        assert torch.equal(final["method"][key], value), key
    client = MlflowClient(mlflow_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    recorded = MlflowClient(tiny_reference.mlflow_uri)
    for metric in HISTORY:
        assert history(client, result.mlflow_run_id, metric) == history(recorded, reference.mlflow_run_id, metric)
