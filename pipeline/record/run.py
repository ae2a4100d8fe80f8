"""One MLflow run: opening or resuming it, logging to it from any process, ending it, and its logged model."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig
from pipeline.record.names import PARENT_TAG, STOPPED_TAG
from pipeline.record.store import experiment_id, mlflow_client

MAX_BATCH = 100


@dataclass(frozen=True)
class RunHandle:
    """Enough to log into one MLflow run from any process."""

    tracking_uri: str
    experiment_id: str
    run_id: str


def open_run(
    uri: str,
    config: TrackingConfig,
    run_name: str,
    params: Mapping[str, Any],
    existing_run_id: str | None = None,
) -> tuple[RunHandle, dict[str, tuple[str, str]]]:
    """Return a handle on a new run (or ``existing_run_id`` when resuming) in store ``uri``, and the changed params.

    Params are logged once; on a resumed run the params whose value differs in this attempt are
    returned as ``{key: (recorded, now)}`` and tagged on the run (MLflow keeps the first value).
    """
    client = mlflow_client(uri)
    exp_id = experiment_id(uri, config.experiment)
    if existing_run_id is not None and _run_exists(client, existing_run_id):
        client.update_run(existing_run_id, status="RUNNING")
        # A run stopped early and trained on is no longer stopped early.
        if STOPPED_TAG in client.get_run(existing_run_id).data.tags:
            client.delete_tag(existing_run_id, STOPPED_TAG)
        handle = RunHandle(uri, client.get_run(existing_run_id).info.experiment_id, existing_run_id)
    else:
        tags = dict(config.tags)
        if config.parent_run_id:
            tags[PARENT_TAG] = config.parent_run_id
        run = client.create_run(exp_id, tags=tags, run_name=config.run_name or run_name)
        handle = RunHandle(uri, exp_id, run.info.run_id)
    changed = log_params(handle, params)
    if changed:
        attempt = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        summary = "; ".join(f"{key}: {old} -> {new}" for key, (old, new) in sorted(changed.items()))
        set_tags(handle, {f"attempt.{attempt}.changed_params": summary})
    return handle, changed


def _run_exists(client: Any, run_id: str) -> bool:
    """Return whether ``run_id`` names a run in the client's store."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_run(run_id)
    except MlflowException:
        return False
    return True


def log_params(handle: RunHandle, params: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Log params not yet on the run; return ``{key: (recorded, now)}`` for those whose value changed."""
    from mlflow.entities import Param

    client = mlflow_client(handle.tracking_uri)
    logged = client.get_run(handle.run_id).data.params
    fresh = []
    changed: dict[str, tuple[str, str]] = {}
    for key, value in params.items():
        text = str(value)
        if key not in logged:
            fresh.append(Param(key, text))
        elif logged[key] != text:
            changed[key] = (logged[key], text)
    for start in range(0, len(fresh), MAX_BATCH):
        client.log_batch(handle.run_id, params=fresh[start : start + MAX_BATCH])
    return changed


def log_metrics(handle: RunHandle, metrics: Mapping[str, float], step: int) -> None:
    """Log ``metrics`` at ``step`` in one batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
    client = mlflow_client(handle.tracking_uri)
    for start in range(0, len(batch), MAX_BATCH):
        client.log_batch(handle.run_id, metrics=batch[start : start + MAX_BATCH])


def last_logged_step(handle: RunHandle, metric: str) -> int:
    """Return the largest step logged for ``metric`` (-1 if none): a restarted run skips those epochs."""
    history = mlflow_client(handle.tracking_uri).get_metric_history(handle.run_id, metric)
    return max((m.step for m in history), default=-1)


def latest_metric(handle: RunHandle, metric: str) -> float | None:
    """Return the latest value logged for ``metric`` on the run, or None."""
    return mlflow_client(handle.tracking_uri).get_run(handle.run_id).data.metrics.get(metric)


def recorded_metric(uri: str, run_id: str | None, metric: str) -> float | None:
    """Return the latest value of ``metric`` on run ``run_id`` in store ``uri``; None if the run or metric is absent."""
    if run_id is None:
        return None
    client = mlflow_client(uri)
    if not _run_exists(client, run_id):
        return None
    return client.get_run(run_id).data.metrics.get(metric)


def log_text(handle: RunHandle, text: str, artifact_file: str) -> None:
    """Store ``text`` as an artifact of the run."""
    mlflow_client(handle.tracking_uri).log_text(handle.run_id, text, artifact_file)


def log_artifact(handle: RunHandle, path: str | Path, artifact_path: str | None = None) -> None:
    """Store the file at ``path`` as an artifact of the run."""
    mlflow_client(handle.tracking_uri).log_artifact(handle.run_id, str(path), artifact_path)


def set_tags(handle: RunHandle, tags: Mapping[str, str]) -> None:
    """Set tags on the run."""
    client = mlflow_client(handle.tracking_uri)
    for key, value in tags.items():
        client.set_tag(handle.run_id, key, value)


def finish_run(handle: RunHandle, status: str) -> None:
    """Mark the run FINISHED, FAILED or KILLED."""
    mlflow_client(handle.tracking_uri).set_terminated(handle.run_id, status=status)


def run_url(handle: RunHandle) -> str:
    """Return where a person finds the run: the server's page or the ``mlflow ui`` command."""
    if handle.tracking_uri.startswith(("http://", "https://")):
        return f"{handle.tracking_uri.rstrip('/')}/#/experiments/{handle.experiment_id}/runs/{handle.run_id}"
    return f"mlflow ui --backend-store-uri {handle.tracking_uri}  (run {handle.run_id})"


def logged_model_id(handle: RunHandle, name: str) -> str | None:
    """Return the id of the MLflow model ``name`` the run has logged (None when it has none of that name)."""
    client = mlflow_client(handle.tracking_uri)
    outputs = client.get_run(handle.run_id).outputs
    for output in outputs.model_outputs if outputs is not None else []:
        if client.get_logged_model(output.model_id).name == name:
            return output.model_id
    return None


def log_model(
    handle: RunHandle, network: Any, input_example: Any, name: str, registered_name: str | None = None
) -> str:
    """Return the model URI ``runs:/<run id>/<name>`` after logging ``network`` on the run as an MLflow PyTorch model.

    ``input_example`` (a numpy batch of more than one image, so the batch dimension stays dynamic) gives
    the signature. The model is saved as a ``torch.export`` program (``pt2``): it loads without this
    project's code. ``registered_name`` also registers it in the store's model registry.
    """
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with torch.no_grad():
        output = network(torch.as_tensor(input_example)).numpy()
    client = mlflow_client(handle.tracking_uri)
    # Created here in the run's own experiment: MLflow's fluent call would file it under the process's current one.
    experiment = client.get_run(handle.run_id).info.experiment_id
    model = client.create_logged_model(experiment, name=name, source_run_id=handle.run_id)
    with _use_tracking_uri(handle.tracking_uri):
        mlflow.pytorch.log_model(
            network,
            name=name,
            model_id=model.model_id,
            run_id=handle.run_id,
            input_example=input_example,
            signature=infer_signature(input_example, output),
            serialization_format="pt2",
            # Inferring requirements probes the environment (about 6 s a run here); torch is all the program needs.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            # Validation reloads the saved program to run the example (about 1.5 s); tests load and compare it instead.
            validate_serving_input=False,
            registered_model_name=registered_name,
        )
    return f"runs:/{handle.run_id}/{name}"


def metric_history(uri: str, run_id: str, metric: str) -> list[tuple[int, float]]:
    """Return every ``(step, value)`` logged for ``metric`` on run ``run_id``, in step order."""
    history = mlflow_client(uri).get_metric_history(run_id, metric)
    return sorted((point.step, point.value) for point in history)


def run_tags(uri: str, run_id: str) -> dict[str, str] | None:
    """Return the tags of run ``run_id`` in store ``uri``, None if the store holds no such run."""
    client = mlflow_client(uri)
    return client.get_run(run_id).data.tags if _run_exists(client, run_id) else None
