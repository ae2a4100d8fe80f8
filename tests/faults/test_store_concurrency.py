"""Several processes using one new sqlite MLflow store at the same moment leave it working.

Before the store lock, two commands that first used a new store at once both crashed in MLflow's
schema migration, and every later command on that store failed with the same error.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.record import run as record_run
from pipeline.record import store

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 3

# Each process loads everything first, says it is ready, then waits for the go file so that all first
# touch the store within a few milliseconds of each other.
FIRST_USE = """
import pathlib, sys, time
import mlflow.store.tracking.sqlalchemy_store
from pipeline.record import store
from pipeline.record import run as record_run
from pipeline.config import TrackingConfig

uri, go, ready, index = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), int(sys.argv[4])
ready.touch()
while not go.exists():
    time.sleep(0.005)
store.check_store(uri)
handle, _ = record_run.open_run(uri, TrackingConfig(uri=uri), f"process-{index}", {"index": index})
record_run.log_metrics(handle, {"index": float(index)}, step=0)
record_run.finish_run(handle, "FINISHED")
"""


def test_first_use_of_a_new_store_by_several_processes_at_once_leaves_it_working(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    go = tmp_path / "go"
    processes = []
    for index in range(PROCESSES):
        ready = tmp_path / f"ready-{index}"
        arguments = [sys.executable, "-c", FIRST_USE, uri, str(go), str(ready), str(index)]
        processes.append(subprocess.Popen(arguments, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{index}").exists() for index in range(PROCESSES)):
        assert time.monotonic() < deadline, "the processes did not get ready"
        assert all(process.poll() is None for process in processes), [p.stdout.read() for p in processes]
        time.sleep(0.05)
    go.touch()
    outputs = [process.communicate(timeout=120)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0] * PROCESSES, "\n".join(outputs)

    # The store is usable afterwards: one experiment, every process's run, and a new run can be recorded.
    client = MlflowClient(uri)
    experiments = client.search_experiments()
    runs = client.search_runs([experiment.experiment_id for experiment in experiments])
    assert sorted(run.info.run_name for run in runs) == [f"process-{index}" for index in range(PROCESSES)]
    assert {run.info.status for run in runs} == {"FINISHED"}
    handle, _ = record_run.open_run(uri, TrackingConfig(uri=uri), "after", {})
    record_run.finish_run(handle, "FINISHED")
    assert (tmp_path / f"mlflow.db{store.LOCK_SUFFIX}").is_file()
