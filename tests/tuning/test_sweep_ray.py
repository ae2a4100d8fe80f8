"""A quick sweep on Ray Tune: parent and child runs in MLflow, a failing trial, an interrupt, a re-run that keeps
finished trials and resumes the unfinished one, and the report (table, CSV, plots) attached to the parent run."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.support.configs import TINY
from tuning import archive, report, sweep

pytestmark = pytest.mark.usefixtures("ray_session")


def write_grid(tmp_path: Path, mlflow_uri: str) -> Path:
    """Write a 3-trial grid on the tiny quickstart (one worker): synthetic, a missing CIFAR-10 folder, synthetic."""
    tiny = {**TINY, "ray.storage_path": str(tmp_path / "runs"), "tracking.uri": mlflow_uri}
    grid = {
        "name": "tiny_sweep",
        "metric": "knn/top1",
        "full": {
            "base": "quickstart.yaml",
            "set": tiny,
            "zip": [
                {
                    "data.source": ["synthetic", "cifar10", "synthetic"],
                    "data.root": [None, str(tmp_path / "no_cifar"), None],
                    "method.temperature": [0.1, 0.1, 0.2],
                }
            ],
            # Every CPU of the test cluster: a trial's own driver must not hold a share its workers then wait for.
            "resources": {"num_workers": 1, "cpus_per_worker": 2},
        },
    }
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def children(client: MlflowClient, parent) -> dict[str, object]:
    """Return the parent's child runs by trial name (one per trial, or the test fails)."""
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    names = [run.data.tags["trial"] for run in runs]
    assert len(names) == len(set(names)), f"a trial has two child runs: {sorted(names)}"
    return {run.data.tags["trial"]: run for run in runs}


def has_started(client: MlflowClient, trial: str) -> bool:
    """Return whether ``trial`` has opened its child run (False while the store cannot be read yet)."""
    try:
        experiments = [experiment.experiment_id for experiment in client.search_experiments()]
        return bool(client.search_runs(experiments, filter_string=f"tags.trial = '{trial}'"))
    except Exception:  # noqa: BLE001 - the sweep may still be creating or migrating the store
        return False


def interrupt_when_started(mlflow_uri: str, trial: str, timeout: float = 240) -> threading.Thread:
    """Start a thread that sends SIGINT to this process (as Ctrl+C would) once ``trial`` has opened its child run."""

    def watch() -> None:
        client, deadline = MlflowClient(mlflow_uri), time.monotonic() + timeout
        while time.monotonic() < deadline:
            if has_started(client, trial):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_quick_sweep_survives_a_failure_and_an_interrupt_resumes_and_reports(
    tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write_grid(tmp_path, mlflow_uri)
    # One trial at a time: 000 finishes, 001 fails, and Ctrl+C lands once 002 has started.
    watcher = interrupt_when_started(mlflow_uri, "tiny_sweep-002")
    assert sweep.main(["--grid", str(grid), "--max-concurrent", "1"]) == 130
    watcher.join(timeout=1)
    printed = capsys.readouterr().out
    assert "trial tiny_sweep-001 failed:" in printed and "no_cifar" in printed
    assert "trial tiny_sweep-000 started (0/3 ended); its epoch lines: " in printed
    assert re.search(r"trial tiny_sweep-000 ended in \d+s: knn/top1 \d+\.\d\d", printed), printed
    assert "trial tiny_sweep-001 failed (the others go on)" in printed
    assert "interrupted: 1 of 3 trials unfinished (tiny_sweep-002); run the same command again" in printed
    client = MlflowClient(mlflow_uri)
    parent = report.find_parent(mlflow_uri, "tiny_sweep")
    killed = client.get_run(parent.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["error"] == "interrupted with 1 trial(s) unfinished: tiny_sweep-002"
    by_trial = children(client, parent)
    finished, failed = by_trial["tiny_sweep-000"], by_trial["tiny_sweep-001"]
    assert finished.info.status == "FINISHED" and failed.info.status == "FAILED"
    interrupted = by_trial["tiny_sweep-002"]
    assert interrupted.info.status == "KILLED" and "the sweep was interrupted" in interrupted.data.tags["interrupted"]
    assert finished.data.tags["axis.data.source"] == "synthetic" and finished.data.tags["seed"] == "0"
    assert "no_cifar" in failed.data.tags["error"]
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "knn/top1")] == [0, 1]

    # The same command again: 000 is kept, 001 is retried (and fails again), 002 resumes in its own run.
    assert sweep.main(["--grid", str(grid), "--max-concurrent", "1"]) == 1
    printed = capsys.readouterr().out
    assert "resuming sweep tiny_sweep" in printed and "interrupted" not in printed
    again = children(client, parent)
    assert sorted(again) == ["tiny_sweep-000", "tiny_sweep-001", "tiny_sweep-002"]
    resumed = again["tiny_sweep-002"]
    assert resumed.info.run_id == by_trial["tiny_sweep-002"].info.run_id and resumed.info.status == "FINISHED"
    for trial in ("tiny_sweep-000", "tiny_sweep-002"):
        assert [m.step for m in client.get_metric_history(again[trial].info.run_id, "knn/top1")] == [0, 1], trial
    ended = client.get_run(parent.info.run_id)
    assert ended.info.status == "FAILED" and ended.data.tags["error"] == "1 trial(s) failed: tiny_sweep-001"

    written = report.write_report(mlflow_uri, parent.info.run_id, tmp_path / "report")
    header = "| data.root | data.source | method.temperature | knn/top1 | seeds done | failed |"
    assert header in written.markdown  # the file's key order
    assert "knn/top1: weighted kNN on frozen backbone features" in written.markdown  # the number's protocol
    best = max(again[trial].data.metrics["knn/top1"] for trial in ("tiny_sweep-000", "tiny_sweep-002"))
    assert f"**{best:.2f}**" in written.markdown
    assert "| cifar10 | 0.1 | failed | 0/1 | 1 |" in written.markdown
    files = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert "report.csv" in files and "learning_curves.png" in files and "knn_top1_vs_data.root.png" in files
    assert (tmp_path / "report" / "report.csv").read_text().splitlines()[0].startswith("data.root,data.source,")
    attached = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.csv", "report/learning_curves.png"} <= attached
    assert "report/all_learning_curves.png" in attached

    # On another machine: a fresh store that imported the sweep's archive keeps its done trials; run only those,
    # nothing trains and the failed trial is left for later.
    archived, other = tmp_path / "tiny_sweep.json", f"sqlite:///{tmp_path / 'other.db'}"
    assert archive.main(["export", "--sweep", "tiny_sweep", "--out", str(archived), "--tracking-uri", mlflow_uri]) == 0
    assert archive.main(["import", str(archived), "--tracking-uri", other]) == 0
    capsys.readouterr()
    assert sweep.main(["--grid", str(grid), "--set", f"tracking.uri={other}", "--trials", "0,2"]) == 0
    printed = capsys.readouterr().out
    assert "resuming sweep tiny_sweep: 2 trial(s) already done" in printed
    assert "sweep tiny_sweep: 0 of 3 trials to run" in printed and "started" not in printed
    assert "1 of 3 trials not run yet: select them with --trials or drop it" in printed
    moved = report.find_parent(other, "tiny_sweep")
    assert moved.info.status == "KILLED" and moved.data.tags["error"].endswith("(outside --trials): tiny_sweep-001")


def test_asha_stops_the_weaker_trial_at_its_first_rung(
    tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny = {**TINY, "ray.storage_path": str(tmp_path / "runs"), "tracking.uri": mlflow_uri}
    tiny.pop("train.epochs")
    grid = {
        "name": "tiny_asha",
        "metric": "train/loss",
        "mode": "min",
        "search": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "full": {
            "base": "quickstart.yaml",
            "set": tiny,
            # T 0.01 makes InfoNCE's loss many times T 0.2's from the first epoch on. The trial waits for Tune's
            # word after each epoch, so the cut lands right after epoch 1; 40 epochs keep the trial far from its
            # end whatever happens.
            "zip": [{"method.temperature": [0.2, 0.01], "train.epochs": [3, 40]}],
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
        },
    }
    path = tmp_path / "tiny_asha.yaml"
    path.write_text(yaml.safe_dump(grid))
    assert sweep.main(["--grid", str(path), "--max-concurrent", "1"]) == 0
    assert "trial tiny_asha-001 stopped early by ASHA" in capsys.readouterr().out
    client = MlflowClient(mlflow_uri)
    parent = report.find_parent(mlflow_uri, "tiny_asha")
    by_trial = children(client, parent)
    kept, stopped = by_trial["tiny_asha-000"], by_trial["tiny_asha-001"]
    assert kept.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(kept.info.run_id, "train/loss")] == [0, 1, 2]
    assert stopped.info.status == "KILLED" and stopped.data.tags["stopped_early"] == "1"
    assert "error" not in stopped.data.tags
    assert len(client.get_metric_history(stopped.info.run_id, "train/loss")) < 40
    # Steered one epoch at a time, the stopped run trained exactly the epoch ASHA judged.
    assert [m.step for m in client.get_metric_history(stopped.info.run_id, "train/loss")] == [0]
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"
    written = report.write_report(mlflow_uri, parent.info.run_id, tmp_path / "report")
    assert "| 0.01 | 40 | stopped at epoch 1 (" in written.markdown
