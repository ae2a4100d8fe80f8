"""The tracking store: resolution order, unreachable and unusable stores, the fallback, busy-store retries."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.record import store

UNREACHABLE = "http://127.0.0.1:9"


def test_store_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store.resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert store.resolve_tracking_uri(TrackingConfig()) == "sqlite:////elsewhere/m.db"
    assert store.resolve_tracking_uri(TrackingConfig(uri="http://server:5000")) == "http://server:5000"


def test_unreachable_store_fails_fast_with_its_uri() -> None:
    started = time.monotonic()
    with pytest.raises(store.TrackingError, match=r"http://127.0.0.1:9 cannot be reached.*fallback_uri"):
        store.reachable_store(TrackingConfig(uri=UNREACHABLE))
    assert time.monotonic() - started < 30


def test_unreachable_store_falls_back_when_configured(mlflow_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.record.store"):
        uri = store.reachable_store(TrackingConfig(uri=UNREACHABLE, fallback_uri=mlflow_uri))
    assert uri == mlflow_uri
    assert "fallback store" in caplog.text


@pytest.mark.parametrize("uri", ["sqlite:////proc/nope/mlflow.db", "sqlite:////proc/mlflow.db"])
def test_unusable_sqlite_location_fails_at_once_naming_it(uri: str) -> None:
    started = time.monotonic()
    with pytest.raises(store.TrackingError, match=rf"{uri} cannot be written: .*set tracking.uri"):
        store.reachable_store(TrackingConfig(uri=uri))
    assert time.monotonic() - started < 5


def test_a_busy_store_is_retried_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(store, "BUSY_PAUSE_S", 0.0)
    calls: list[str] = []

    def busy_twice(value: str) -> str:
        calls.append(value)
        if len(calls) <= 2:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return value

    assert store.retry_busy(busy_twice, "done") == "done" and len(calls) == 3

    def always_busy() -> None:
        calls.append("busy")
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    calls.clear()
    with pytest.raises(MlflowException, match="database is locked"):
        store.retry_busy(always_busy)
    assert len(calls) == store.BUSY_ATTEMPTS

    def broken() -> None:
        calls.append("broken")
        raise MlflowException("no such run")

    calls.clear()
    with pytest.raises(MlflowException, match="no such run"):
        store.retry_busy(broken)
    assert calls == ["broken"]


def test_sqlite_clients_retry_and_other_stores_get_the_plain_client(mlflow_uri: str) -> None:
    assert isinstance(store.mlflow_client(mlflow_uri), store.BusyRetryingClient)
    assert store.mlflow_client(mlflow_uri).tracking_uri == mlflow_uri
    assert isinstance(store.mlflow_client(UNREACHABLE), MlflowClient)
