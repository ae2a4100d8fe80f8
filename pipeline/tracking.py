"""Everything MLflow: where runs are stored, opening or reusing a run, logging from workers."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
# Set by the sweep driver on a run its scheduler stopped; such a run stays KILLED whatever its processes report.
STOPPED_TAG = "stopped_early"
MAX_BATCH = 100
# Beside a sqlite store: serialises its creation and schema migration across processes (commands, trials, workers).
LOCK_SUFFIX = ".lock"
# MLflow already waits up to 20 s for a sqlite lock per call; a call that still finds the store busy is retried.
BUSY_ATTEMPTS = 4
BUSY_PAUSE_S = 1.0
# sqlite stores whose schema this process has created or checked under the lock (MLflow caches the store per URI).
_PREPARED_STORES: set[str] = set()


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; the message says which URI and why."""


@dataclass(frozen=True)
class RunHandle:
    """Enough to log into one MLflow run from any process."""

    tracking_uri: str
    experiment_id: str
    run_id: str


def default_tracking_uri() -> str:
    """Return the embedded default store: an absolute sqlite file in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def resolve_tracking_uri(config: TrackingConfig) -> str:
    """Return the store to use: ``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the local sqlite file."""
    return config.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Path | None:
    """Return the database file of a ``sqlite:///`` store URI (None for any other store)."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def store_lock(database: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<database>.lock`` while the block runs (other processes wait for it)."""
    with open(f"{database}{LOCK_SUFFIX}", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_busy(error: BaseException) -> bool:
    """Return whether ``error`` says a sqlite store was locked by another writer (worth retrying)."""
    return "database is locked" in str(error) or "database table is locked" in str(error)


def retry_busy(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Return ``call(*args, **kwargs)``, retried up to ``BUSY_ATTEMPTS`` times in all while the store is busy."""
    attempt = 1
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if attempt >= BUSY_ATTEMPTS or not is_busy(exc):
                raise
            log.warning("MLflow store busy (%s); retrying (%d/%d)", type(exc).__name__, attempt, BUSY_ATTEMPTS - 1)
            time.sleep(BUSY_PAUSE_S * attempt)
            attempt += 1


class BusyRetryingClient:
    """An MlflowClient whose calls are retried while a sqlite store is busy; everything else is the client's own."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return functools.partial(retry_busy, attribute)


def mlflow_client(uri: str) -> Any:
    """Return an MlflowClient bound to ``uri``; a sqlite store is created or migrated under its file lock first.

    Several processes creating or migrating one new sqlite store at once break it for good (MLflow's
    migrations are not atomic), so the first client of each process builds the store holding
    ``<database>.lock``; every later call is retried while another writer holds the database.
    """
    from mlflow import MlflowClient

    database = sqlite_path(uri)
    if database is None:
        return MlflowClient(tracking_uri=uri)
    if uri not in _PREPARED_STORES and database.parent.is_dir():
        with store_lock(database):
            # Building the client builds MLflow's cached store for this URI: schema creation and migration.
            MlflowClient(tracking_uri=uri)
        _PREPARED_STORES.add(uri)
    return BusyRetryingClient(MlflowClient(tracking_uri=uri))


def _artifact_root(uri: str, experiment: str) -> str | None:
    """Return an absolute artifact folder beside a local sqlite store (None: the server decides)."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri.removeprefix("sqlite:///"))
    return (database.parent / "mlartifacts" / experiment).as_uri()


def _check_sqlite_location(uri: str) -> None:
    """Raise TrackingError naming the path unless a sqlite store's folder exists (or can be made) and is writable."""
    database = Path(uri.removeprefix("sqlite:///"))
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
        # A probe file answers at once where MLflow would spend minutes retrying a read-only database.
        with tempfile.NamedTemporaryFile(dir=database.parent, prefix=".mlflow-write-probe-"):
            pass
        if database.exists() and not os.access(database, os.W_OK):
            raise PermissionError(f"{database} is read-only")
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise TrackingError(
            f"MLflow tracking store {uri} cannot be written: {reason} ({database.parent}); set tracking.uri"
        ) from None


def check_store(uri: str) -> str:
    """Return ``uri`` if the store answers a query (and, for sqlite, can be written); raise TrackingError otherwise."""
    if uri.startswith("sqlite:///"):
        _check_sqlite_location(uri)
    previous = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
    try:
        mlflow_client(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any failure means the store is unusable; say why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrackingError(f"MLflow tracking store {uri} cannot be reached: {reason}") from None
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return uri


def existing_store(uri: str) -> str:
    """Return ``uri`` if it names a store that already exists and answers; raise TrackingError otherwise.

    For commands that only read what was recorded (reports, run lookups): opening a sqlite URI creates
    the database, so a mistyped path would leave an empty store behind and report "nothing found".
    """
    database = sqlite_path(uri)
    if database is not None and not database.is_file():
        raise TrackingError(f"no MLflow store at {database} (from {uri}): check the store URI")
    return check_store(uri)


def reachable_store(config: TrackingConfig) -> str:
    """Return a usable store URI, falling back to ``tracking.fallback_uri`` if configured, else raise."""
    uri = resolve_tracking_uri(config)
    try:
        return check_store(uri)
    except TrackingError as exc:
        if not config.fallback_uri:
            raise TrackingError(f"{exc} (set tracking.fallback_uri to record locally instead)") from None
        log.warning("%s; recording to the fallback store %s instead", exc, config.fallback_uri)
        return check_store(config.fallback_uri)


def experiment_id(uri: str, name: str) -> str:
    """Return the id of experiment ``name`` in store ``uri``, creating it if needed."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_root(uri, name))
    except MlflowException as exc:
        # Another process (a second command, a concurrent trial) created it between the lookup and here.
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


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


def stopped_by_scheduler(handle: RunHandle) -> bool:
    """Return whether a sweep's scheduler stopped the run (it carries ``STOPPED_TAG``)."""
    return STOPPED_TAG in mlflow_client(handle.tracking_uri).get_run(handle.run_id).data.tags


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
