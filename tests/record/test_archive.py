"""A sweep's archive (no Ray): exported from one store and imported into another, the done trials come back with
their params, tags, status and full metric histories; importing twice records nothing twice; bad files and a
store holding the sweep with other trials are refused with one line naming them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.record import archive, names, store
from pipeline.record import sweep as sweep_record
from tuning import archive as archive_command
from tuning import report

TRIALS = [{"name": f"grid-{index:03d}", "axis_values": {"method.alpha": index / 10}, "seed": 0} for index in range(4)]


def make_sweep(tmp_path: Path, uri: str, trials: list[dict] = TRIALS) -> tuple[str, dict[str, str]]:
    """Return the parent of a 4-trial sweep ``grid`` and its child runs by trial: finished, failed, stopped, none."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: grid\nmetric: knn/top1\n")
    parent = sweep_record.find_or_create_parent(
        uri, "contrastive", "grid", trials, {"metric": "knn/top1", "mode": "max"}, grid
    )
    client = MlflowClient(uri)
    experiment = store.experiment_id(uri, "contrastive")
    runs = {}
    for trial, status in zip(trials[:3], ["FINISHED", "FAILED", "KILLED"], strict=True):
        tags = {names.PARENT_TAG: parent, names.TRIAL_TAG: trial["name"], "axis.method.alpha": "x", "seed": "0"}
        if status == "KILLED":
            tags[names.STOPPED_TAG] = "1"
        if status == "FINISHED":
            tags[names.COMPLETE_TAG] = "2026-12-07T00:00:00Z"
            tags[names.RUN_DIR_TAG] = "/somewhere/on/that/machine"
        run_id = client.create_run(experiment, tags=tags, run_name=trial["name"]).info.run_id
        client.log_param(run_id, "method.alpha", trial["axis_values"]["method.alpha"])
        for epoch in range(3 if status == "FINISHED" else 1):
            client.log_metric(run_id, "knn/top1", 30.0 + epoch + trial["axis_values"]["method.alpha"], step=epoch)
            client.log_metric(run_id, "train/loss", 5.0 - epoch, step=epoch * 10)
        client.set_terminated(run_id, status=status)
        runs[trial["name"]] = run_id
    sweep_record.end_parent(uri, parent, "KILLED", "1 trial(s) not run yet")
    return parent, runs


def fresh_store(tmp_path: Path, mlflow_uri: str, name: str) -> str:
    """Return another empty store beside the test's own (a copy of its empty file)."""
    other = tmp_path / name
    shutil.copyfile(mlflow_uri.removeprefix("sqlite:///"), other)
    return f"sqlite:///{other}"


def children(uri: str, sweep: str) -> dict[str, object]:
    """Return the sweep's child runs in ``uri`` by trial name (one per trial, or the test fails)."""
    runs = sweep_record.child_runs(uri, sweep_record.find_parent(uri, sweep))
    by_trial = {run.data.tags[names.TRIAL_TAG]: run for run in runs}
    assert len(by_trial) == len(runs)
    return by_trial


def test_an_imported_sweep_holds_the_done_trials_as_they_were_recorded(tmp_path: Path, mlflow_uri: str) -> None:
    other = fresh_store(tmp_path, mlflow_uri, "other.db")
    _, runs = make_sweep(tmp_path, mlflow_uri)
    record = archive.export_sweep(mlflow_uri, "grid")
    # The failed trial is not done: it is left out, so the sweep on the new store runs it again.
    assert [trial["tags"][names.TRIAL_TAG] for trial in record["trials"]] == ["grid-000", "grid-002"]
    assert record["planned"] == TRIALS
    # The file form: valid JSON, one line per trial.
    text = archive.archive_text(record)
    assert json.loads(text) == json.loads(json.dumps(record)) and len(text.splitlines()) == 2 + 6 + 2 + 2

    running = json.loads(json.dumps(record))
    running["parent"]["status"] = "RUNNING"  # exported while the sweep ran
    parent, imported, present, clashing = archive.import_sweep(other, running, "archive.json")
    assert MlflowClient(other).get_run(parent).info.status == "KILLED"  # nothing runs it in this store
    assert (imported, present, clashing) == (["grid-000", "grid-002"], [], [])
    assert sweep_record.planned_trials(other, parent) == TRIALS
    moved, source = children(other, "grid"), MlflowClient(mlflow_uri)
    client = MlflowClient(other)
    for trial in ("grid-000", "grid-002"):
        was, now = source.get_run(runs[trial]), moved[trial]
        assert now.info.status == was.info.status and now.info.run_name == trial
        assert (now.info.start_time, now.info.end_time) == (was.info.start_time, was.info.end_time)
        assert now.data.params == was.data.params
        assert now.data.tags[names.PARENT_TAG] == parent and now.data.tags[archive.IMPORTED_TAG] == "archive.json"
        for key in ("knn/top1", "train/loss"):
            history = [(m.step, m.value, m.timestamp) for m in client.get_metric_history(now.info.run_id, key)]
            assert history == [(m.step, m.value, m.timestamp) for m in source.get_metric_history(runs[trial], key)]
    assert names.STOPPED_TAG in moved["grid-002"].data.tags
    # A folder of the machine the trial trained on means nothing here.
    assert names.RUN_DIR_TAG not in moved["grid-000"].data.tags
    # The report reads the imported store: the finished trial's last kNN figure, the failed one pending.
    written = report.write_report(other, "grid", tmp_path / "report")
    assert "**32.00**" in written.markdown
    assert "pending" in written.markdown

    again = archive.import_sweep(other, record, "archive.json")
    assert again == (parent, [], ["grid-000", "grid-002"], [])
    assert len(sweep_record.child_runs(other, sweep_record.find_parent(other, "grid"))) == 2


def test_an_archive_never_mixes_with_a_sweep_of_the_same_name_that_planned_other_trials(
    tmp_path: Path, mlflow_uri: str
) -> None:
    other = fresh_store(tmp_path, mlflow_uri, "other.db")
    make_sweep(tmp_path, mlflow_uri)
    make_sweep(tmp_path, other, TRIALS[:3])
    with pytest.raises(sweep_record.SweepRecordError, match="already exists .* with other trials"):
        archive.import_sweep(other, archive.export_sweep(mlflow_uri, "grid"), "archive.json")


def test_the_command_round_trips_and_refuses_bad_files_in_one_line(
    tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    other = fresh_store(tmp_path, mlflow_uri, "other.db")
    make_sweep(tmp_path, mlflow_uri)
    out = tmp_path / "evidence" / "grid.json"
    assert archive_command.main(["export", "--sweep", "grid", "--out", str(out), "--tracking-uri", mlflow_uri]) == 0
    assert f"sweep grid: 2 done trial(s) of 4 written to {out}" in capsys.readouterr().out
    assert archive_command.main(["import", str(out), "--tracking-uri", other]) == 0
    assert "sweep grid: 2 trial(s) imported, 0 already in the store" in capsys.readouterr().out

    foreign, odd = tmp_path / "foreign.json", tmp_path / "odd.json"
    exported = json.loads(out.read_text())
    exported["trials"][1]["metrics"]["knn/top1"] = [[0, 1, "high"]]
    odd.write_text(json.dumps(exported))
    foreign.write_text(json.dumps({"format": "something-else"}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cases = [
        (["import", str(tmp_path / "missing.json")], "no sweep archive at"),
        (["import", str(foreign)], "is not a sweep archive (its 'format'"),
        (["import", str(broken)], "broken.json is not a sweep archive"),
        (["import", str(odd)], "trials[1].metrics.knn/top1 is not a list of [step, time, value]"),
        (
            ["export", "--sweep", "nope", "--out", str(tmp_path / "x.json")],
            "no sweep named or with parent run id 'nope'",
        ),
    ]
    for argv, message in cases:
        assert archive_command.main([*argv, "--tracking-uri", other]) == 2, argv
        error = capsys.readouterr().err
        assert message in error and len(error.strip().splitlines()) == 1, error
    assert not (tmp_path / "x.json").exists()


def test_a_finished_run_is_done_only_once_complete_and_a_stopped_one_only_when_stopped_by_the_scheduler(
    tmp_path: Path, mlflow_uri: str
) -> None:
    client = MlflowClient(mlflow_uri)
    experiment = store.experiment_id(mlflow_uri, "contrastive")
    cases = [
        ("FINISHED", {names.COMPLETE_TAG: "t"}, True),
        # Finished pretraining whose evaluation then failed or was cut short: run again.
        ("FINISHED", {names.ERROR_TAG: "evaluation failed"}, False),
        ("KILLED", {names.STOPPED_TAG: "2"}, True),
        ("KILLED", {names.INTERRUPTED_TAG: "t"}, False),
        ("FAILED", {}, False),
    ]
    for status, tags, expected in cases:
        run_id = client.create_run(experiment, tags=tags).info.run_id
        client.set_terminated(run_id, status=status)
        assert sweep_record.done(client.get_run(run_id)) is expected, (status, tags)


def test_a_trial_the_store_holds_unfinished_is_not_imported_beside_it(tmp_path: Path, mlflow_uri: str) -> None:
    other = fresh_store(tmp_path, mlflow_uri, "other.db")
    make_sweep(tmp_path, mlflow_uri)
    # The other store ran the same sweep: grid-000 failed there, grid-002 was never started.
    parent, _ = make_sweep(tmp_path, other)
    client = MlflowClient(other)
    for run in sweep_record.child_runs(other, sweep_record.find_parent(other, "grid")):
        if run.data.tags[names.TRIAL_TAG] != "grid-001":
            client.delete_run(run.info.run_id)
    failed = client.create_run(
        store.experiment_id(other, "contrastive"), tags={names.PARENT_TAG: parent, names.TRIAL_TAG: "grid-000"}
    ).info.run_id
    client.set_terminated(failed, status="FAILED")
    result = archive.import_sweep(other, archive.export_sweep(mlflow_uri, "grid"), "archive.json")
    assert result == (parent, ["grid-002"], [], ["grid-000"])
    assert sorted(children(other, "grid")) == ["grid-000", "grid-001", "grid-002"]


def test_a_run_that_cannot_be_written_whole_is_removed(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = fresh_store(tmp_path, mlflow_uri, "other.db")
    make_sweep(tmp_path, mlflow_uri)
    record = archive.export_sweep(mlflow_uri, "grid")
    parent, *_ = archive.import_sweep(other, {**record, "trials": []}, "archive.json")

    def refuse(self: MlflowClient, run_id: str, metrics: object = (), **kwargs: object) -> None:
        if metrics:
            raise MlflowException("the store refused the batch")
        original(self, run_id, metrics=metrics, **kwargs)

    original = MlflowClient.log_batch
    monkeypatch.setattr(MlflowClient, "log_batch", refuse)
    with pytest.raises(MlflowException, match="refused"):
        archive.import_sweep(other, record, "archive.json")
    monkeypatch.undo()
    assert children(other, "grid") == {}
    # Nothing half-written is left to pass for the trial: a later import brings it in whole.
    assert archive.import_sweep(other, record, "archive.json")[1] == ["grid-000", "grid-002"]
