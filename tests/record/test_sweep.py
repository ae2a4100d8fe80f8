"""How a sweep trial's run ends in MLflow. A trial ASHA stopped ends KILLED with its ``stopped_early`` tag, whatever
its torn-down workers write after the stop: the race the Ray sweep test once lost (the trial's own FAILED landed
after the driver's KILLED). A failure is recorded; an interrupted trial left RUNNING is ended KILLED."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from pipeline.config import ExperimentConfig
from pipeline.record import names, store, sweep
from pipeline.record import run as record_run
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


def test_a_stopped_trials_late_failure_is_not_recorded_and_the_sweep_settles_it_killed(
    tmp_path: Path, mlflow_uri: str
) -> None:
    config, child = trial_config(tmp_path, mlflow_uri)
    client = MlflowClient(mlflow_uri)
    handle = record_run.RunHandle(mlflow_uri, client.get_run(child).info.experiment_id, child)
    assert not record_run.stopped_by_scheduler(handle)
    assert not sweep.settle_stopped(config.tracking)

    sweep.mark_stopped(config.tracking, epochs=1)
    assert record_run.stopped_by_scheduler(handle)
    sweep.record_failure(config.tracking, RuntimeError("worker died\nActorDiedError: the placement group was removed"))
    assert "error" not in client.get_run(child).data.tags

    # The order the CI run saw: the trial's processes write FAILED and an error after the driver's KILLED.
    client.set_tag(child, "error", "ActorDiedError")
    client.set_terminated(child, status="FAILED")
    assert sweep.settle_stopped(config.tracking)
    settled = client.get_run(child)
    assert settled.info.status == "KILLED"
    assert settled.data.tags[names.STOPPED_TAG] == "1" and "error" not in settled.data.tags


def test_a_failure_of_a_trial_that_was_not_stopped_is_recorded(tmp_path: Path, mlflow_uri: str) -> None:
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
