"""The sweep report from runs in a store (no Ray): every trial's learning curve, interrupted trials in the table."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
from mlflow import MlflowClient

from pipeline.record import store
from tuning.report import TrialRecord, markdown_table, plot_all_learning_curves, summarise, trial_curves


def test_every_trial_with_an_epoch_is_drawn_and_none_without(tmp_path: Path, mlflow_uri: str) -> None:
    client = MlflowClient(mlflow_uri)
    experiment = store.experiment_id(mlflow_uri, "sweep")
    records = []
    for index, (status, value, epochs) in enumerate([("FINISHED", 60.0, 3), ("KILLED", None, 1), ("FAILED", None, 0)]):
        run_id = client.create_run(experiment).info.run_id
        for epoch in range(epochs):
            client.log_metric(run_id, "knn/top1", 40.0 + 10 * epoch + index, step=epoch)
        records.append(TrialRecord(f"grid-{index:03d}", {"method.alpha": index}, 0, status, value, run_id))
    records.append(TrialRecord("grid-003", {"method.alpha": 3}, 0, "PENDING", None, None))
    # The finished trial's 3 epochs and the interrupted one's single epoch; the failed one (no epoch) and the
    # pending one (no run) have nothing to draw.
    drawn = [(record.name, epochs, values) for record, epochs, values in trial_curves(mlflow_uri, records)]
    assert drawn == [("grid-000", [1, 2, 3], [40.0, 50.0, 60.0]), ("grid-001", [1], [41.0])]
    path = plot_all_learning_curves(mlflow_uri, records, tmp_path)
    assert path == tmp_path / "all_learning_curves.png"
    height, width, _ = matplotlib.image.imread(path).shape
    assert (width, height) == (700, 450)
    assert plot_all_learning_curves(mlflow_uri, records[2:], tmp_path / "empty") is None


def test_the_report_shows_an_interrupted_trial_as_interrupted_not_pending() -> None:
    records = [
        TrialRecord("grid-000", {"method.temperature": 0.1}, 0, "KILLED", None, "run0"),
        TrialRecord("grid-001", {"method.temperature": 0.2}, 0, "PENDING", None, None),
    ]
    table = markdown_table(summarise(records, "max"), ["method.temperature"], "knn/top1")
    assert "| 0.1 | interrupted | 0/1 | 0 |" in table and "| 0.2 | pending | 0/1 | 0 |" in table
