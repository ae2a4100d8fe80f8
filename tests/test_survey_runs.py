"""The survey's methods (Deep InfoMax, CPC v2) train 2 epochs (local runs, one worker), losses and kNN in MLflow.

Their global-batch gathers across workers are checked by tests/distributed/test_world_size.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.runtime.launch import pretrain
from tests.support.configs import tiny_overrides


@pytest.mark.parametrize(
    ("config", "overrides", "loss", "bounds"),
    [
        # The JSD loss is minus an estimate bounded by 2 log 2.
        ("dim_synthetic.yaml", {"method.estimator": "jsd"}, "train/dim_jsd", (-2 * math.log(2), math.inf)),
        # InfoNCE over the batch's 16 images x 49 patches starts near log(784), not far above it.
        ("cpc_synthetic.yaml", {"method.directions": ["down", "up"]}, "train/cpc", (0.0, 2 * math.log(784))),
    ],
)
def test_two_epoch_run_logs_its_loss_every_epoch(
    tmp_path: Path, mlflow_uri: str, config: str, overrides: dict[str, object], loss: str, bounds: tuple[float, float]
) -> None:
    values = tiny_overrides(tmp_path, mlflow_uri, **{**overrides, "eval.linear.enabled": False, "ray.num_workers": 1})
    values.pop("method.queue_size")
    result = pretrain(with_overrides(load_config(config), values), local=True)
    client = MlflowClient(mlflow_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    for key in ("train/loss", loss, "knn/top1"):
        assert [metric.step for metric in client.get_metric_history(result.mlflow_run_id, key)] == [0, 1], key
    low, high = bounds
    assert all(low < metric.value < high for metric in client.get_metric_history(result.mlflow_run_id, loss))
