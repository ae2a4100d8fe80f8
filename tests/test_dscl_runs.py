"""DSCL + PBSD trains 2 epochs on long-tailed synthetic data (a local run), then the linear stage reports shots.

Its gathers across workers are checked by tests/distributed/test_world_size.py.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.runtime.launch import pretrain
from tests.support.configs import tiny_overrides


def test_dscl_with_pbsd_on_long_tailed_data_then_class_balanced_probe(tmp_path: Path, mlflow_uri: str) -> None:
    overrides = tiny_overrides(
        tmp_path,
        mlflow_uri,
        **{
            "data.synthetic.num_train": 400,
            "data.long_tail_ratio": 10,
            "method.pbsd.num_patches": 2,
            "train.epochs": 2,
            "eval.linear.epochs": 5,
            "ray.num_workers": 1,
        },
    )
    result = pretrain(with_overrides(load_config("dscl_synthetic_lt.yaml"), overrides), local=True)
    client = MlflowClient(mlflow_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    for key in ("train/dscl", "train/pbsd", "train/class_positives", "knn/top1"):
        assert [m.step for m in client.get_metric_history(result.mlflow_run_id, key)] == [0, 1], key
    positives = [m.value for m in client.get_metric_history(result.mlflow_run_id, "train/class_positives")]
    assert all(value > 0 for value in positives)
    backbone = result.evaluation["backbone"]
    assert {"top1", "many", "medium", "few"} <= set(backbone)
    run = client.get_run(result.mlflow_run_id)
    # Long-tailed training data: ``auto`` sampling resolved to class-balanced.
    assert run.data.tags["eval/features/sampling"] == "class_balanced"
    for shot in ("many", "medium", "few"):
        assert f"eval/features/backbone/{shot}" in run.data.metrics
