"""The kNN-by-layer benchmark reproduces the run's own kNN monitor on the backbone and also reads the head's output."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.runtime.launch import pretrain
from tests.support.benchmarks import load_benchmark
from tests.support.configs import tiny_config


def test_backbone_figures_are_the_monitors_and_the_head_is_measured(tmp_path: Path, mlflow_uri: str) -> None:
    knn_layers = load_benchmark("knn_layers")
    config = tiny_config(tmp_path, mlflow_uri, **{"ray.num_workers": 1, "train.epochs": 2})
    result = pretrain(config, local=True)
    run_dir = Path(result.checkpoint_path).parent
    logged = {
        point.step + 1: point.value
        for point in MlflowClient(mlflow_uri).get_metric_history(result.mlflow_run_id, "knn/top1")
    }
    rows = knn_layers.knn_layers(run_dir, [])
    assert [epochs for epochs, _, _ in rows] == [1, 2]
    for epochs, backbone, head in rows:
        assert backbone == pytest.approx(logged[epochs], abs=1e-9)
        assert 0.0 <= head <= 100.0
    assert [epochs for epochs, _, _ in knn_layers.knn_layers(run_dir, [], epochs=[2])] == [2]
    with pytest.raises(SystemExit, match=r"--epochs \[3\]: .* epochs \[1, 2\] only"):
        knn_layers.complete_checkpoints(run_dir, [2, 3])


def test_a_run_without_a_checkpoint_is_named(tmp_path: Path) -> None:
    knn_layers = load_benchmark("knn_layers")
    with pytest.raises(SystemExit, match="no complete checkpoint"):
        knn_layers.complete_checkpoints(tmp_path)
