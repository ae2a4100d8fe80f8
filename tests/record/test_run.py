"""One MLflow run: params logged once and reused on resume, metric history, final status."""

from __future__ import annotations

from mlflow import MlflowClient

from pipeline.config import TrackingConfig
from pipeline.record import names
from pipeline.record import run as record_run


def test_open_run_logs_params_and_is_reused(mlflow_uri: str) -> None:
    config = TrackingConfig(uri=mlflow_uri, experiment="unit", parent_run_id="parent123", tags={"grid": "k"})
    handle, changed = record_run.open_run(mlflow_uri, config, "run-a", {"method.name": "moco", "ray.num_workers": 1})
    assert changed == {}
    client = MlflowClient(mlflow_uri)
    run = client.get_run(handle.run_id)
    assert run.data.params == {"method.name": "moco", "ray.num_workers": "1"}
    assert run.data.tags[names.PARENT_TAG] == "parent123" and run.data.tags["grid"] == "k"
    assert run.info.run_name == "run-a"
    artifact_uri = client.get_experiment(handle.experiment_id).artifact_location
    assert artifact_uri.startswith("file://") and "mlartifacts" in artifact_uri

    params = {"method.name": "moco", "ray.num_workers": 2}
    again, changed = record_run.open_run(mlflow_uri, config, "run-a", params, handle.run_id)
    assert again.run_id == handle.run_id
    assert changed == {"ray.num_workers": ("1", "2")}
    reused = client.get_run(handle.run_id)
    assert reused.data.params["ray.num_workers"] == "1"
    attempt_tags = {key: value for key, value in reused.data.tags.items() if key.startswith("attempt.")}
    assert list(attempt_tags.values()) == ["ray.num_workers: 1 -> 2"]

    missing, _ = record_run.open_run(mlflow_uri, config, "run-b", {}, existing_run_id="0" * 32)
    assert missing.run_id != handle.run_id


def test_metric_history_and_final_status(mlflow_uri: str) -> None:
    handle, _ = record_run.open_run(mlflow_uri, TrackingConfig(uri=mlflow_uri), "run", {})
    assert record_run.last_logged_step(handle, "train/loss") == -1
    assert record_run.latest_metric(handle, "train/loss") is None
    for epoch, loss in enumerate([3.0, 2.0, 1.5]):
        record_run.log_metrics(handle, {"train/loss": loss, "knn/top1": 10.0 * epoch}, step=epoch)
    assert record_run.last_logged_step(handle, "train/loss") == 2
    assert record_run.latest_metric(handle, "train/loss") == 1.5
    record_run.log_text(handle, "a: 1\n", "config.yaml")
    record_run.finish_run(handle, "FINISHED")
    client = MlflowClient(mlflow_uri)
    assert client.get_run(handle.run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(handle.run_id)] == ["config.yaml"]
    assert "mlflow ui --backend-store-uri" in record_run.run_url(handle)
