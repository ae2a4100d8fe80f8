"""``ray job submit --working-dir .`` against a local head of its own: the quickstart runs as a job, attaches to
that cluster (no local Ray of its own), records its MLflow run, and only that head is stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from mlflow import MlflowClient

from tests.support.configs import TINY

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.usefixtures("ray_session")


def free_port() -> int:
    """Return a TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture()
def job_head() -> Iterator[tuple[str, dict[str, str]]]:
    """Start a blocking local head (own ports, own short temp dir) and yield its job address and environment."""
    # Ray's socket paths must stay short: a temp dir under /tmp, not pytest's deep tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rayjob", dir="/tmp")
    dashboard = free_port()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={free_port()}",
            f"--dashboard-port={dashboard}",
            # Every fixed default port may be held by this session's own Ray: take free ones.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--dashboard-host=127.0.0.1",
            "--include-dashboard=true",
            "--num-cpus=2",
            "--object-store-memory=100000000",
            f"--temp-dir={temp_dir}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address], env=env, capture_output=True, text=True
            )
            if status.returncode == 0:
                break
            if time.monotonic() > deadline or head.poll() is not None:
                raise RuntimeError(f"the test head did not come up: {status.stderr[-2000:]}")
            time.sleep(1)
        yield address, env
    finally:
        # Only this head goes: the blocking `ray start` and everything in its own process group (its GCS,
        # raylet, dashboard and workers), never `ray stop`, which would stop every Ray of the user.
        for group_signal in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, group_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=5)
                break
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_quickstart_runs_as_a_ray_job_and_records_its_mlflow_run(
    job_head: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, env = job_head
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = {
        **TINY,
        "train.epochs": 1,
        "ray.num_workers": 1,
        "ray.run_name": "job-quickstart",
        "ray.storage_path": str(tmp_path / "runs"),
        "tracking.uri": uri,
    }
    command = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        address,
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        "pipeline.pretrain",
        "--config",
        "configs/quickstart.yaml",
        *[part for key, value in overrides.items() for part in ("--set", f"{key}={value}")],
    ]
    deadline = time.monotonic() + 60
    while True:
        submitted = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        output = submitted.stdout + submitted.stderr
        # The head answers before its job agent is up; Ray says so and asks to try again.
        if "No available agent to submit job" not in output or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert submitted.returncode == 0, output[-3000:]
    assert "succeeded" in output and "=== pretraining finished ===" in output, output[-3000:]

    runs = MlflowClient(uri).search_runs(
        [experiment.experiment_id for experiment in MlflowClient(uri).search_experiments()]
    )
    assert [run.data.tags["run_name"] for run in runs] == ["job-quickstart"]
    assert runs[0].info.status == "FINISHED" and "knn/top1" in runs[0].data.metrics
    # The job joined the head it was submitted to: this session's own Ray is another cluster and still works.
    assert ray.is_initialized() and ray.get(ray.put(7)) == 7
