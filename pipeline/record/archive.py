"""A sweep's record as one JSON document: written from one MLflow store, read back into another.

A machine that does not outlive its session keeps its sweep in the document (committed beside the code); a fresh
store that imports it holds the parent run and every done trial's run again, with their params, tags and full
metric histories, so the sweep command keeps those trials and runs only the rest. Artifacts (models, pictures,
reports) are not carried: a report rebuilt from the imported store is drawn again from the metrics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.record.names import (
    GRID_TAG,
    IMPORTED_TAG,
    MACHINE_TAGS,
    PARENT_ROLE,
    PARENT_TAG,
    SWEEP_ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    TRIALS_ARTIFACT,
    children_filter,
)
from pipeline.record.run import RunHandle, log_params
from pipeline.record.store import experiment_id, mlflow_client
from pipeline.record.sweep import SweepRecordError, child_runs, done, existing_parent, find_parent, planned_trials

FORMAT = "contrastive-sweep-archive/1"
MAX_METRICS = 1000
RUN_FIELDS = {"run_name": str, "status": str, "start_time": int, "params": dict, "tags": dict, "metrics": dict}


def _run_record(client: Any, run: Any) -> dict[str, Any]:
    """Return one run's record: name, status, times, params, user tags and every metric's full history."""
    metrics = {
        key: [[m.step, m.timestamp, m.value] for m in client.get_metric_history(run.info.run_id, key)]
        for key in sorted(run.data.metrics)
    }
    tags = {
        key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.") and key not in MACHINE_TAGS
    }
    return {
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
        "params": dict(sorted(run.data.params.items())),
        "tags": dict(sorted(tags.items())),
        "metrics": metrics,
    }


def export_sweep(uri: str, sweep: str) -> dict[str, Any]:
    """Return the archive of sweep ``sweep`` (name or parent run id) in store ``uri``: its parent and done trials."""
    client = mlflow_client(uri)
    parent = find_parent(uri, sweep)
    grid_name = Path(parent.data.tags.get(GRID_TAG, "grid.yaml")).name
    grid_text = Path(client.download_artifacts(parent.info.run_id, f"grid/{grid_name}")).read_text()
    trials = [run for run in child_runs(uri, parent) if done(run)]
    trials.sort(key=lambda run: run.data.tags.get(TRIAL_TAG, ""))
    return {
        "format": FORMAT,
        "experiment": client.get_experiment(parent.info.experiment_id).name,
        "sweep": parent.data.tags[SWEEP_TAG],
        "parent": _run_record(client, parent),
        "planned": planned_trials(uri, parent.info.run_id),
        "grid": {"name": grid_name, "text": grid_text},
        "trials": [_run_record(client, run) for run in trials],
    }


def archive_text(record: dict[str, Any]) -> str:
    """Return ``record`` as JSON text with one line per top-level entry and per trial, so a diff shows trials."""
    compact = {"separators": (",", ":"), "sort_keys": False}
    lines = [f" {json.dumps(key)}: {json.dumps(value, **compact)}," for key, value in record.items() if key != "trials"]
    trials = ",\n".join(f"  {json.dumps(trial, **compact)}" for trial in record["trials"])
    return "{\n" + "\n".join(lines) + '\n "trials": [\n' + trials + "\n ]\n}\n"


def read_archive(path: Path) -> dict[str, Any]:
    """Return the archive stored at ``path``; raise SweepRecordError naming the path and the first bad entry."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepRecordError(f"no sweep archive at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SweepRecordError(f"{path} is not a sweep archive: {exc}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SweepRecordError(f"{path} is not a sweep archive (its 'format' is not {FORMAT!r})")
    missing = [key for key in ("experiment", "sweep", "parent", "planned", "grid", "trials") if key not in record]
    if missing:
        raise SweepRecordError(f"sweep archive {path} lacks {', '.join(missing)}")
    for where, run in [("parent", record["parent"])] + [(f"trials[{i}]", t) for i, t in enumerate(record["trials"])]:
        _check_run(path, where, run)
    return record


def _check_run(path: Path, where: str, run: Any) -> None:
    """Raise SweepRecordError naming ``where`` in archive ``path`` if ``run`` is not a run record."""
    if not isinstance(run, dict):
        raise SweepRecordError(f"sweep archive {path}: {where} is not a run record")
    for field, kind in RUN_FIELDS.items():
        if not isinstance(run.get(field), kind):
            raise SweepRecordError(f"sweep archive {path}: {where}.{field} is missing or not a {kind.__name__}")
    for key, history in run["metrics"].items():
        if not isinstance(history, list) or not all(_is_point(point) for point in history):
            raise SweepRecordError(f"sweep archive {path}: {where}.metrics.{key} is not a list of [step, time, value]")


def _is_point(point: Any) -> bool:
    """Return whether ``point`` is a metric point ``[step, timestamp, value]`` of numbers."""
    return (
        isinstance(point, list)
        and len(point) == 3
        and all(isinstance(part, int | float) and not isinstance(part, bool) for part in point)
    )


def _create_run(uri: str, experiment: str, record: dict[str, Any], tags: dict[str, str]) -> str:
    """Return the id of a new run holding ``record``'s params, metric histories and times, ended as it ended."""
    from mlflow.entities import Metric

    client = mlflow_client(uri)
    run = client.create_run(experiment, start_time=record["start_time"], tags=tags, run_name=record["run_name"])
    run_id = run.info.run_id
    try:
        log_params(RunHandle(uri, experiment, run_id), record["params"])
        metrics = [
            Metric(key, float(value), int(timestamp), int(step))
            for key, history in record["metrics"].items()
            for step, timestamp, value in history
        ]
        for start in range(0, len(metrics), MAX_METRICS):
            client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS])
        # A sweep exported while it ran is not running in this store.
        status = "KILLED" if record["status"] == "RUNNING" else record["status"]
        client.set_terminated(run_id, status=status, end_time=record.get("end_time"))
    except BaseException:
        # A half-written run would read as the trial's own run to the next import and to the sweep.
        client.delete_run(run_id)
        raise
    return run_id


def import_sweep(uri: str, record: dict[str, Any], source: str) -> tuple[str, list[str], list[str], list[str]]:
    """Return the parent run id and the imported, already-present and clashing trials after reading ``record``.

    The sweep's parent is found (it must have planned the same trials) or created holding the archived grid.
    A trial the store already holds done is left as it is, so importing twice records nothing twice; a trial
    of which the store holds a run that is not done (failed, interrupted) clashes and is not imported, since
    the store's own run would then be one of two for that trial.
    """
    client = mlflow_client(uri)
    experiment = experiment_id(uri, record["experiment"])
    sweep = record["sweep"]
    parent = existing_parent(uri, experiment, sweep, record["planned"])
    if parent is None:
        tags = {**record["parent"]["tags"], SWEEP_TAG: sweep, SWEEP_ROLE_TAG: PARENT_ROLE, IMPORTED_TAG: source}
        parent = _create_run(uri, experiment, record["parent"], tags)
        try:
            client.log_text(parent, json.dumps(record["planned"], indent=2), TRIALS_ARTIFACT)
            client.log_text(parent, record["grid"]["text"], f"grid/{record['grid']['name']}")
        except BaseException:
            client.delete_run(parent)
            raise
    imported, present, clashing = [], [], []
    for trial in record["trials"]:
        name = trial["tags"].get(TRIAL_TAG, trial["run_name"])
        held = client.search_runs([experiment], filter_string=children_filter(parent, name))
        if held:
            (present if any(done(run) for run in held) else clashing).append(name)
            continue
        _create_run(uri, experiment, trial, {**trial["tags"], PARENT_TAG: parent, IMPORTED_TAG: source})
        imported.append(name)
    return parent, imported, present, clashing
