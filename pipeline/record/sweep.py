"""A sweep in MLflow: its parent run, one child run per trial, and how each trial's run ends."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig
from pipeline.record.names import (
    COMPLETE_TAG,
    ERROR_TAG,
    GRID_TAG,
    INTERRUPTED_TAG,
    PARENT_ROLE,
    PARENT_TAG,
    STOPPED_TAG,
    SWEEP_ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TRIALS_ARTIFACT,
    children_filter,
    sweep_parent_filter,
)
from pipeline.record.run import RunHandle, log_params, log_text
from pipeline.record.store import experiment_id, mlflow_client

SEARCH_PAGE = 1000


class SweepRecordError(ValueError):
    """The store holds a sweep of this name that does not match the grid, or no sweep of the name asked for."""


def find_or_create_parent(
    uri: str,
    experiment: str,
    sweep: str,
    trials: list[dict[str, Any]],
    params: Mapping[str, Any],
    grid_path: Path,
) -> str:
    """Return the id of sweep ``sweep``'s parent run, RUNNING again; a new one holding the grid if none exists.

    ``trials`` is the planned trials' record (name, axis values, seed); an existing parent that planned
    other trials raises SweepRecordError, so a changed grid never mixes with an old sweep's runs.
    """
    client = mlflow_client(uri)
    experiment_key = experiment_id(uri, experiment)
    parent = existing_parent(uri, experiment_key, sweep, trials)
    if parent is not None:
        client.update_run(parent, status="RUNNING")
        return parent
    tags = {SWEEP_TAG: sweep, SWEEP_ROLE_TAG: PARENT_ROLE, GRID_TAG: str(grid_path)}
    run = client.create_run(experiment_key, tags=tags, run_name=sweep)
    handle = RunHandle(uri, experiment_key, run.info.run_id)
    log_params(handle, params)
    log_text(handle, json.dumps(trials, indent=2), TRIALS_ARTIFACT)
    log_text(handle, grid_path.read_text(), f"grid/{grid_path.name}")
    return run.info.run_id


def existing_parent(uri: str, experiment_key: str, sweep: str, trials: list[dict[str, Any]]) -> str | None:
    """Return the id of sweep ``sweep``'s parent run in the experiment, None if there is none.

    Raise SweepRecordError if that parent planned other trials than ``trials``: a changed grid never mixes
    with an old sweep's runs.
    """
    found = mlflow_client(uri).search_runs([experiment_key], filter_string=sweep_parent_filter(sweep))
    if not found:
        return None
    parent = found[0].info.run_id
    if planned_trials(uri, parent) != json.loads(json.dumps(trials)):
        raise SweepRecordError(
            f"sweep {sweep} already exists in {uri} (MLflow run {parent}) with other trials: "
            f"rename the grid or remove the old sweep to run a changed grid"
        )
    return parent


def planned_trials(uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Return the trials (name, axis values, seed) the sweep of ``parent_run_id`` planned."""
    path = mlflow_client(uri).download_artifacts(parent_run_id, TRIALS_ARTIFACT)
    return json.loads(Path(path).read_text())


def find_parent(uri: str, sweep: str) -> Any:
    """Return the parent run named by ``sweep`` (a parent run id, or a sweep name); raise SweepRecordError if none."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    with contextlib.suppress(MlflowException):  # not a run id: look the name up instead
        run = client.get_run(sweep)
        if run.data.tags.get(SWEEP_ROLE_TAG) == PARENT_ROLE:
            return run
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    found = client.search_runs(experiments, filter_string=sweep_parent_filter(sweep))
    if not found:
        raise SweepRecordError(f"no sweep named or with parent run id {sweep!r} in {uri}")
    return found[0]


def child_runs(uri: str, parent: Any) -> list[Any]:
    """Return every child run of the sweep parent run ``parent`` (all attempts of every trial, every page)."""
    client = mlflow_client(uri)
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [parent.info.experiment_id],
            filter_string=children_filter(parent.info.run_id),
            max_results=SEARCH_PAGE,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def done(run: Any) -> bool:
    """Return whether a trial's run is done: complete (pretrained and evaluated), or stopped early by the scheduler."""
    if run.info.status == "FINISHED":
        return COMPLETE_TAG in run.data.tags
    return run.info.status == "KILLED" and STOPPED_TAG in run.data.tags


def mark_complete(tracking: TrackingConfig, run_id: str) -> None:
    """Tag a trial's run complete: its pretraining and evaluation both ended, so the sweep keeps it from now on."""
    mlflow_client(tracking.uri).set_tag(run_id, COMPLETE_TAG, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def find_child(tracking: TrackingConfig) -> str | None:
    """Return the id of a trial's child run (``tracking`` is the trial's), None before it is opened."""
    client = mlflow_client(tracking.uri)
    experiment_key = experiment_id(tracking.uri, tracking.experiment)
    trial = tracking.tags[TRIAL_TAG]
    found = client.search_runs([experiment_key], filter_string=children_filter(tracking.parent_run_id, trial))
    return found[0].info.run_id if found else None


def record_failure(tracking: TrackingConfig, error: BaseException) -> None:
    """Tag the trial's child run with ``error`` (creating a FAILED one when it failed before opening its run)."""
    client = mlflow_client(tracking.uri)
    child = find_child(tracking)
    message = (str(error).strip().splitlines() or [type(error).__name__])[-1][:5000]
    if child:
        client.set_tag(child, ERROR_TAG, message)
        return
    tags = {**tracking.tags, PARENT_TAG: tracking.parent_run_id, ERROR_TAG: message}
    run = client.create_run(experiment_id(tracking.uri, tracking.experiment), tags=tags, run_name=tracking.run_name)
    client.set_terminated(run.info.run_id, status="FAILED")


def mark_stopped(tracking: TrackingConfig, epochs: int) -> None:
    """Tag the trial's child run ``stopped_early`` with the epochs the scheduler judged (no run yet: nothing)."""
    child = find_child(tracking)
    if child is not None:
        mlflow_client(tracking.uri).set_tag(child, STOPPED_TAG, str(epochs))


def end_stopped(tracking: TrackingConfig) -> None:
    """End KILLED the run of a trial the scheduler stopped that Tune tore down before it could end itself."""
    child = find_child(tracking)
    if child is None:
        return
    client = mlflow_client(tracking.uri)
    if client.get_run(child).info.status == "RUNNING":
        client.set_terminated(child, status="KILLED")


def child_status(tracking: TrackingConfig) -> tuple[str | None, bool]:
    """Return the trial's child run status (None before it is opened) and whether it was stopped early."""
    child = find_child(tracking)
    if child is None:
        return None, False
    run = mlflow_client(tracking.uri).get_run(child)
    return run.info.status, STOPPED_TAG in run.data.tags


def end_interrupted(tracking: TrackingConfig) -> bool:
    """Return whether the trial's child run was cut short by an interrupt; if so end it KILLED, tagged why.

    An interrupted trial's run either ended itself KILLED at its epoch boundary or was left RUNNING when
    Tune tore its processes down; a run that finished, failed or was stopped early keeps its record.
    """
    child = find_child(tracking)
    if child is None:
        return False
    client = mlflow_client(tracking.uri)
    run = client.get_run(child)
    if run.info.status not in ("RUNNING", "KILLED") or STOPPED_TAG in run.data.tags:
        return False
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_tag(child, INTERRUPTED_TAG, f"{when}: the sweep was interrupted; run it again to resume this trial")
    if run.info.status == "RUNNING":
        client.set_terminated(child, status="KILLED")
    return True


def end_parent(uri: str, parent_run_id: str, status: str, reason: str | None) -> None:
    """End the sweep's parent run with ``status``: the ``error`` tag says why it did not finish (dropped if it did)."""
    client = mlflow_client(uri)
    if reason is not None:
        client.set_tag(parent_run_id, ERROR_TAG, reason)
    elif ERROR_TAG in client.get_run(parent_run_id).data.tags:
        client.delete_tag(parent_run_id, ERROR_TAG)
    client.set_terminated(parent_run_id, status=status)
