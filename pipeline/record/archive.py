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
from pipeline.record.run import MAX_BATCH
from pipeline.record.store import experiment_id, mlflow_client
from pipeline.record.sweep import SweepRecordError, child_runs, find_parent, planned_trials

FORMAT = "contrastive-sweep-archive/1"
# On an imported run: where its record came from, so that a figure is never mistaken for one measured in this store.
IMPORTED_TAG = "imported_from"
MAX_METRICS = 1000


def done(run: Any) -> bool:
    """Return whether a trial's run is done: FINISHED, or ended by the sweep's scheduler (``stopped_early``)."""
    return run.info.status == "FINISHED" or (run.info.status == "KILLED" and STOPPED_TAG in run.data.tags)


def _run_record(client: Any, run: Any) -> dict[str, Any]:
    """Return one run's record: name, status, times, params, user tags and every metric's full history."""
    metrics = {
        key: [[m.step, m.timestamp, m.value] for m in client.get_metric_history(run.info.run_id, key)]
        for key in sorted(run.data.metrics)
    }
    tags = {key: value for key, value in run.data.tags.items() if not key.startswith("mlflow.")}
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


def read_archive(path: Path) -> dict[str, Any]:
    """Return the archive stored at ``path``; raise SweepRecordError naming the path if it is not one."""
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
    return record


def _create_run(client: Any, experiment: str, record: dict[str, Any], tags: dict[str, str]) -> str:
    """Return the id of a new run holding ``record``'s params, metric histories and times, ended as it ended."""
    from mlflow.entities import Metric, Param

    run = client.create_run(experiment, start_time=record["start_time"], tags=tags, run_name=record["run_name"])
    run_id = run.info.run_id
    params = [Param(key, str(value)) for key, value in record["params"].items()]
    for start in range(0, len(params), MAX_BATCH):
        client.log_batch(run_id, params=params[start : start + MAX_BATCH])
    metrics = [
        Metric(key, value, timestamp, step)
        for key, history in record["metrics"].items()
        for step, timestamp, value in history
    ]
    for start in range(0, len(metrics), MAX_METRICS):
        client.log_batch(run_id, metrics=metrics[start : start + MAX_METRICS])
    if record["status"] != "RUNNING":
        client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
    return run_id


def import_sweep(uri: str, record: dict[str, Any], source: str) -> tuple[str, list[str], list[str]]:
    """Return the parent run id and the imported and already-present trials after reading ``record`` into ``uri``.

    The sweep's parent is found (it must have planned the same trials) or created holding the archived grid;
    a trial whose run the store already holds is left as it is, so importing twice records nothing twice.
    """
    client = mlflow_client(uri)
    experiment = experiment_id(uri, record["experiment"])
    sweep = record["sweep"]
    found = client.search_runs([experiment], filter_string=sweep_parent_filter(sweep))
    if found:
        parent = found[0].info.run_id
        if planned_trials(uri, parent) != record["planned"]:
            raise SweepRecordError(
                f"sweep {sweep} already exists in {uri} (MLflow run {parent}) with other trials than the archive's"
            )
    else:
        tags = {**record["parent"]["tags"], SWEEP_TAG: sweep, SWEEP_ROLE_TAG: PARENT_ROLE, IMPORTED_TAG: source}
        parent = _create_run(client, experiment, record["parent"], tags)
        client.log_text(parent, json.dumps(record["planned"], indent=2), TRIALS_ARTIFACT)
        client.log_text(parent, record["grid"]["text"], f"grid/{record['grid']['name']}")
    imported, present = [], []
    for trial in record["trials"]:
        name = trial["tags"].get(TRIAL_TAG, trial["run_name"])
        if client.search_runs([experiment], filter_string=children_filter(parent, name)):
            present.append(name)
            continue
        _create_run(client, experiment, trial, {**trial["tags"], PARENT_TAG: parent, IMPORTED_TAG: source})
        imported.append(name)
    return parent, imported, present
