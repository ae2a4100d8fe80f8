"""ASCL and ASCL-BYOL train for 2 epochs (local runs, one worker) with their target statistics in MLflow.

Their global-batch gathers across workers are checked by tests/distributed/test_world_size.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.runtime.launch import pretrain
from tests.support.configs import tiny_overrides

STATISTICS = ("train/confidence", "train/own_key_weight", "train/neighbour_agreement")


@pytest.mark.parametrize(
    ("config_name", "method", "loss"),
    [
        ("ascl_synthetic.yaml", {"method.mode": "ahcl", "method.num_neighbors": 2}, "train/soft_info_nce"),
        ("quickstart.yaml", {"method.name": "ascl_byol", "method.num_neighbors": 2}, "train/soft_byol"),
    ],
)
def test_two_epoch_run_logs_target_statistics_every_epoch(
    tmp_path: Path, mlflow_uri: str, config_name: str, method: dict[str, object], loss: str
) -> None:
    overrides = tiny_overrides(tmp_path, mlflow_uri, **method, **{"ray.num_workers": 1})
    if "method.name" in method:
        overrides.pop("method.queue_size")
    result = pretrain(with_overrides(load_config(config_name), overrides), local=True)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    for key in (loss, "knn/top1", *STATISTICS):
        history = client.get_metric_history(result.mlflow_run_id, key)
        assert [metric.step for metric in history] == [0, 1], key
    for key in STATISTICS:
        values = [metric.value for metric in client.get_metric_history(result.mlflow_run_id, key)]
        assert all(0.0 <= value <= 1.0 for value in values), (key, values)
    # The own key keeps the most weight but soft targets move some of it to neighbours.
    own = [metric.value for metric in client.get_metric_history(result.mlflow_run_id, "train/own_key_weight")]
    assert all(1 / 3 <= value < 1.0 for value in own), own
