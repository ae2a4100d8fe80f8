"""The sweep report from runs in a store (no Ray): every trial's learning curve, interrupted trials in the table."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pytest
from mlflow import MlflowClient

from pipeline.record import names, store
from pipeline.record import sweep as sweep_record
from tuning.report import TrialRecord, main, markdown_table, plot_all_learning_curves, summarise, trial_curves


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


def test_further_metrics_get_their_own_columns_over_the_seeds_that_logged_them(
    tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: grid\n")
    trials = [
        {"name": f"grid-{index:03d}", "axis_values": {"method.name": name, "method.mode": mode}, "seed": seed}
        for index, (name, mode, seed) in enumerate([("moco", None, 0), ("moco", None, 1), ("ascl", "hard", 0)])
    ]
    params = {"metric": "eval/features/backbone/top1", "mode": "max"}
    parent = sweep_record.find_or_create_parent(mlflow_uri, "contrastive", "grid", trials, params, grid)
    client, experiment = MlflowClient(mlflow_uri), store.experiment_id(mlflow_uri, "contrastive")
    logged = [  # linear, kNN, raw-pixel floor (the ASCL trial logged no floor)
        (45.0, 42.0, 28.0),
        (47.0, 43.0, 29.0),
        (48.0, 44.0, None),
    ]
    for trial, (linear, knn, pixels) in zip(trials, logged, strict=True):
        tags = {names.PARENT_TAG: parent, names.TRIAL_TAG: trial["name"]}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.log_metric(run_id, "eval/features/backbone/top1", linear)
        client.log_metric(run_id, "knn/top1", knn)
        if pixels is not None:
            client.log_metric(run_id, "eval/features/raw_pixels/top1", pixels)
        client.set_terminated(run_id, status="FINISHED")
    argv = ["--sweep", "grid", "--tracking-uri", mlflow_uri, "--out", str(tmp_path / "report")]
    assert main([*argv, "--metrics", "knn/top1, eval/features/raw_pixels/top1"]) == 0
    printed = capsys.readouterr().out
    header = "| method.name | method.mode | eval/features/backbone/top1 | knn/top1 | eval/features/raw_pixels/top1 |"
    assert header in printed
    # The MoCo point leaves method.mode unset: a blank cell, not "null".
    assert "| moco |  | 46.00 ± 1.41 | 42.50 ± 0.71 | 28.50 ± 0.71 | 2/2 | 0 |" in printed
    assert "| ascl | hard | **48.00** | 44.00 |  | 1/1 | 0 |" in printed
    # Each number's protocol is stated once.
    assert "knn/top1: weighted kNN" in printed and "eval/features/raw_pixels/top1: offline linear probe" in printed
    csv_header = (tmp_path / "report" / "report.csv").read_text().splitlines()[0]
    assert csv_header.startswith("method.name,method.mode,mean,std,knn/top1:mean,knn/top1:std,")


def test_a_point_with_one_finished_seed_shows_no_spread() -> None:
    records = [
        TrialRecord("grid-000", {"method.temperature": 0.1}, 0, "FINISHED", 45.88, "run0"),
        TrialRecord("grid-001", {"method.temperature": 0.1}, 1, "PENDING", None, None),
    ]
    table = markdown_table(summarise(records, "max"), ["method.temperature"], "knn/top1")
    assert "| 0.1 | **45.88** | 1/2 | 0 |" in table


def test_a_point_whose_seeds_ran_under_other_numerics_says_so_and_a_uniform_sweep_shows_no_column() -> None:
    mixed = [
        TrialRecord("grid-000", {"method.temperature": 0.1}, 0, "FINISHED", 45.0, "run0"),
        TrialRecord("grid-001", {"method.temperature": 0.1}, 1, "FINISHED", 46.0, "run1", autocast="bfloat16"),
        TrialRecord("grid-002", {"method.temperature": 0.2}, 0, "FINISHED", 44.0, "run2", autocast="bfloat16"),
        TrialRecord("grid-003", {"method.temperature": 0.2}, 1, "PENDING", None, None),
    ]
    table = markdown_table(summarise(mixed, "max"), ["method.temperature"], "knn/top1")
    assert "| method.temperature | knn/top1 | autocast | seeds done | failed |" in table
    assert "| 0.1 | **45.50 ± 0.71** | bfloat16 + unrecorded | 2/2 | 0 |" in table
    assert "| 0.2 | 44.00 | bfloat16 | 1/2 | 0 |" in table
    uniform = [record for record in mixed if record.autocast == "bfloat16"]
    assert "autocast" not in markdown_table(summarise(uniform, "max"), ["method.temperature"], "knn/top1")
