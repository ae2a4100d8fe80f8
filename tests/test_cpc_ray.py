"""CPC v2 trains for 2 epochs on Ray Train (2 workers) with its loss and kNN monitor in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.launch import pretrain
from tests.support.configs import tiny_overrides

pytestmark = pytest.mark.usefixtures("ray_session")


def test_two_epoch_cpc_run_logs_its_loss_every_epoch(tmp_path: Path, mlflow_uri: str) -> None:
    overrides = tiny_overrides(
        tmp_path, mlflow_uri, **{"method.directions": ["down", "up"], "eval.linear.enabled": False}
    )
    overrides.pop("method.queue_size")
    result = pretrain(with_overrides(load_config("cpc_synthetic.yaml"), overrides))
    client = MlflowClient(mlflow_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    for key in ("train/loss", "train/cpc", "knn/top1"):
        assert [metric.step for metric in client.get_metric_history(result.mlflow_run_id, key)] == [0, 1], key
    # InfoNCE over the 2 workers' 8 images x 49 patches starts near log(392) and may not exceed it by much.
    first = client.get_metric_history(result.mlflow_run_id, "train/cpc")[0].value
    assert 0 < first < 2 * 5.97
