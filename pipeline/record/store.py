"""Where runs are stored: resolving, checking and opening an MLflow store, safely from many processes."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig

log = logging.getLogger(__name__)

# Beside a sqlite store: serialises its creation and schema migration across processes (commands, trials, workers).
LOCK_SUFFIX = ".lock"
# MLflow already waits up to 20 s for a sqlite lock per call; a call that still finds the store busy is retried.
BUSY_ATTEMPTS = 4
BUSY_PAUSE_S = 1.0
# sqlite stores whose schema this process has created or checked under the lock (MLflow caches the store per URI).
_PREPARED_STORES: set[str] = set()


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; the message says which URI and why."""


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
