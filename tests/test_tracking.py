"""MLflow tracking: store resolution, unreachable stores, run reuse, params and metric history."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import tracking
from pipeline.config import TrackingConfig

UNREACHABLE = "http://127.0.0.1:9"


def test_store_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(TrackingConfig()) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/m.db")
    assert tracking.resolve_tracking_uri(TrackingConfig()) == "sqlite:////elsewhere/m.db"
    assert tracking.resolve_tracking_uri(TrackingConfig(uri="http://server:5000")) == "http://server:5000"


def test_unreachable_store_fails_fast_with_its_uri() -> None:
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=r"http://127.0.0.1:9 cannot be reached.*fallback_uri"):
        tracking.reachable_store(TrackingConfig(uri=UNREACHABLE))
    assert time.monotonic() - started < 30


def test_unreachable_store_falls_back_when_configured(mlflow_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.tracking"):
        uri = tracking.reachable_store(TrackingConfig(uri=UNREACHABLE, fallback_uri=mlflow_uri))
    assert uri == mlflow_uri
    assert "fallback store" in caplog.text


def test_open_run_logs_params_and_is_reused(mlflow_uri: str) -> None:
    config = TrackingConfig(uri=mlflow_uri, experiment="unit", parent_run_id="parent123", tags={"grid": "k"})
    handle, changed = tracking.open_run(mlflow_uri, config, "run-a", {"method.name": "moco", "ray.num_workers": 1})
    assert changed == {}
    client = MlflowClient(mlflow_uri)
    run = client.get_run(handle.run_id)
    assert run.data.params == {"method.name": "moco", "ray.num_workers": "1"}
    assert run.data.tags[tracking.PARENT_TAG] == "parent123" and run.data.tags["grid"] == "k"
    assert run.info.run_name == "run-a"
    artifact_uri = client.get_experiment(handle.experiment_id).artifact_location
    assert artifact_uri.startswith("file://") and "mlartifacts" in artifact_uri

    params = {"method.name": "moco", "ray.num_workers": 2}
    again, changed = tracking.open_run(mlflow_uri, config, "run-a", params, handle.run_id)
    assert again.run_id == handle.run_id
    assert changed == {"ray.num_workers": ("1", "2")}
    reused = client.get_run(handle.run_id)
    assert reused.data.params["ray.num_workers"] == "1"
    attempt_tags = {key: value for key, value in reused.data.tags.items() if key.startswith("attempt.")}
    assert list(attempt_tags.values()) == ["ray.num_workers: 1 -> 2"]

    missing, _ = tracking.open_run(mlflow_uri, config, "run-b", {}, existing_run_id="0" * 32)
    assert missing.run_id != handle.run_id


@pytest.mark.parametrize("uri", ["sqlite:////proc/nope/mlflow.db", "sqlite:////proc/mlflow.db"])
def test_unusable_sqlite_location_fails_at_once_naming_it(uri: str) -> None:
    started = time.monotonic()
    with pytest.raises(tracking.TrackingError, match=rf"{uri} cannot be written: .*set tracking.uri"):
        tracking.reachable_store(TrackingConfig(uri=uri))
    assert time.monotonic() - started < 5


def test_metric_history_and_final_status(mlflow_uri: str) -> None:
    handle, _ = tracking.open_run(mlflow_uri, TrackingConfig(uri=mlflow_uri), "run", {})
    assert tracking.last_logged_step(handle, "train/loss") == -1
    assert tracking.latest_metric(handle, "train/loss") is None
    for epoch, loss in enumerate([3.0, 2.0, 1.5]):
        tracking.log_metrics(handle, {"train/loss": loss, "knn/top1": 10.0 * epoch}, step=epoch)
    assert tracking.last_logged_step(handle, "train/loss") == 2
    assert tracking.latest_metric(handle, "train/loss") == 1.5
    tracking.log_text(handle, "a: 1\n", "config.yaml")
    tracking.finish_run(handle, "FINISHED")
    client = MlflowClient(mlflow_uri)
    assert client.get_run(handle.run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(handle.run_id)] == ["config.yaml"]
    assert "mlflow ui --backend-store-uri" in tracking.run_url(handle)


def test_a_busy_store_is_retried_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.exceptions import MlflowException

    monkeypatch.setattr(tracking, "BUSY_PAUSE_S", 0.0)
    calls: list[str] = []

    def busy_twice(value: str) -> str:
        calls.append(value)
        if len(calls) <= 2:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return value

    assert tracking.retry_busy(busy_twice, "done") == "done" and len(calls) == 3

    def always_busy() -> None:
        calls.append("busy")
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    calls.clear()
    with pytest.raises(MlflowException, match="database is locked"):
        tracking.retry_busy(always_busy)
    assert len(calls) == tracking.BUSY_ATTEMPTS

    def broken() -> None:
        calls.append("broken")
        raise MlflowException("no such run")

    calls.clear()
    with pytest.raises(MlflowException, match="no such run"):
        tracking.retry_busy(broken)
    assert calls == ["broken"]


def test_sqlite_clients_retry_and_other_stores_get_the_plain_client(mlflow_uri: str) -> None:
    assert isinstance(tracking.mlflow_client(mlflow_uri), tracking.BusyRetryingClient)
    assert tracking.mlflow_client(mlflow_uri).tracking_uri == mlflow_uri
    assert isinstance(tracking.mlflow_client(UNREACHABLE), MlflowClient)
