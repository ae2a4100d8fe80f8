"""How a sweep reads and ends its trials' runs in MLflow: a failure is recorded; an interrupted trial (left RUNNING,
or ended KILLED at its epoch boundary) is tagged why; a stopped-early one keeps its record."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from pipeline.config import ExperimentConfig
from pipeline.record import names, store, sweep
from tests.support.configs import tiny_config


def trial_config(tmp_path: Path, mlflow_uri: str) -> tuple[ExperimentConfig, str]:
    """Return a trial's config pointing at a fresh parent run, and that trial's child run id."""
    client = MlflowClient(mlflow_uri)
    experiment = store.experiment_id(mlflow_uri, "contrastive")
    parent = client.create_run(experiment, run_name="sweep").info.run_id
    config = tiny_config(
        tmp_path, mlflow_uri, **{"tracking.parent_run_id": parent, "tracking.tags": {"trial": "grid-001"}}
    )
    tags = {names.PARENT_TAG: parent, "trial": "grid-001"}
    child = client.create_run(experiment, tags=tags, run_name="grid-001").info.run_id
    return config, child


def test_a_trials_failure_is_recorded_on_its_child_run(tmp_path: Path, mlflow_uri: str) -> None:
    config, child = trial_config(tmp_path, mlflow_uri)
    sweep.record_failure(config.tracking, RuntimeError("Traceback ...\nValueError: loss is nan"))
    run = MlflowClient(mlflow_uri).get_run(child)
    assert run.data.tags["error"] == "ValueError: loss is nan" and names.STOPPED_TAG not in run.data.tags


def test_an_interrupted_trial_left_running_is_ended_killed_with_the_reason(tmp_path: Path, mlflow_uri: str) -> None:
    config, child = trial_config(tmp_path, mlflow_uri)
    client = MlflowClient(mlflow_uri)
    assert client.get_run(child).info.status == "RUNNING"
    assert sweep.end_interrupted(config.tracking)
    run = client.get_run(child)
    assert run.info.status == "KILLED" and "the sweep was interrupted" in run.data.tags[names.INTERRUPTED_TAG]
    # A run that already ended (finished, failed, stopped) keeps its status.
    client.set_terminated(child, status="FINISHED")
    assert not sweep.end_interrupted(config.tracking)
    assert client.get_run(child).info.status == "FINISHED"


def test_a_trial_that_ended_itself_killed_is_tagged_interrupted_unless_it_was_stopped_early(
    tmp_path: Path, mlflow_uri: str
) -> None:
    config, child = trial_config(tmp_path, mlflow_uri)
    client = MlflowClient(mlflow_uri)
    client.set_terminated(child, status="KILLED")
    assert sweep.child_status(config.tracking) == ("KILLED", False)
    assert sweep.end_interrupted(config.tracking)
    assert "the sweep was interrupted" in client.get_run(child).data.tags[names.INTERRUPTED_TAG]

    client.delete_tag(child, names.INTERRUPTED_TAG)
    client.set_tag(child, names.STOPPED_TAG, "1")
    assert sweep.child_status(config.tracking) == ("KILLED", True)
    assert not sweep.end_interrupted(config.tracking)
    assert names.INTERRUPTED_TAG not in client.get_run(child).data.tags


def test_a_trial_without_a_child_run_has_no_status(tmp_path: Path, mlflow_uri: str) -> None:
    config = tiny_config(tmp_path, mlflow_uri, **{"tracking.parent_run_id": "0" * 32, "tracking.tags": {"trial": "x"}})
    assert sweep.child_status(config.tracking) == (None, False)
    assert not sweep.end_interrupted(config.tracking)


def test_a_stopped_trial_is_tagged_by_the_sweep_and_ended_killed_if_tune_tore_it_down_running(
    tmp_path: Path, mlflow_uri: str
) -> None:
    config, child = trial_config(tmp_path, mlflow_uri)
    client = MlflowClient(mlflow_uri)
    sweep.mark_stopped(config.tracking, epochs=1)
    assert sweep.child_status(config.tracking) == ("RUNNING", True)
    assert not sweep.end_interrupted(config.tracking)  # stopped early, not interrupted
    sweep.end_stopped(config.tracking)
    run = client.get_run(child)
    assert run.info.status == "KILLED" and run.data.tags[names.STOPPED_TAG] == "1"
    assert names.INTERRUPTED_TAG not in run.data.tags
