"""A quick sweep on Ray Tune: parent and child runs in MLflow, a failing trial, a re-run that keeps finished trials,
and the report (table, CSV, plots) attached to the parent run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from tests.support.configs import TINY
from tuning import report, sweep

pytestmark = pytest.mark.usefixtures("ray_session")


def write_grid(tmp_path: Path, mlflow_uri: str) -> Path:
    """Write a 2-trial grid on the tiny quickstart (one worker): synthetic data, and a missing CIFAR-10 folder."""
    tiny = {**TINY, "ray.storage_path": str(tmp_path / "runs"), "tracking.uri": mlflow_uri}
    grid = {
        "name": "tiny_sweep",
        "metric": "knn/top1",
        "full": {
            "base": "quickstart.yaml",
            "set": tiny,
            "zip": [{"data.source": ["synthetic", "cifar10"], "data.root": [None, str(tmp_path / "no_cifar")]}],
            "resources": {"num_workers": 1, "cpus_per_worker": 1},
        },
    }
    path = tmp_path / "tiny_sweep.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_quick_sweep_records_children_survives_a_failure_resumes_and_reports(
    tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = write_grid(tmp_path, mlflow_uri)
    assert sweep.main(["--grid", str(grid), "--max-concurrent", "2"]) == 1, "one trial failed"
    printed = capsys.readouterr().out
    assert "trial tiny_sweep-001 failed:" in printed and "no_cifar" in printed
    client = MlflowClient(mlflow_uri)
    parent = report.find_parent(mlflow_uri, "tiny_sweep")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_trial = {child.data.tags["trial"]: child for child in children}
    assert set(by_trial) == {"tiny_sweep-000", "tiny_sweep-001"}
    finished, failed = by_trial["tiny_sweep-000"], by_trial["tiny_sweep-001"]
    assert finished.info.status == "FINISHED" and failed.info.status == "FAILED"
    assert finished.data.tags["axis.data.source"] == "synthetic" and finished.data.tags["seed"] == "0"
    assert "no_cifar" in failed.data.tags["error"]
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "knn/top1")] == [0, 1]

    # The same command again: the finished trial is kept, the failed one is retried (and fails again).
    assert sweep.main(["--grid", str(grid), "--max-concurrent", "2"]) == 1
    printed = capsys.readouterr().out
    assert "resuming sweep tiny_sweep" in printed
    again = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(child.data.tags["trial"] for child in again) == ["tiny_sweep-000", "tiny_sweep-001"]
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "knn/top1")] == [0, 1], "not re-run"

    written = report.write_report(mlflow_uri, parent.info.run_id, tmp_path / "report")
    assert "| data.root | data.source | knn/top1 | seeds done | failed |" in written.markdown  # the file's key order
    assert f"**{finished.data.metrics['knn/top1']:.2f}**" in written.markdown
    assert "| cifar10 | failed | 0/1 | 1 |" in written.markdown
    files = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert "report.csv" in files and "learning_curves.png" in files and "knn_top1_vs_data.root.png" in files
    assert (tmp_path / "report" / "report.csv").read_text().splitlines()[0].startswith("data.root,data.source,mean")
    attached = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", "report/report.csv", "report/learning_curves.png"} <= attached
