"""A tiny ViT from timm trains MoCo v2 and HCSC (with its clustering actor) for two epochs on Ray Train."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.config import load_config, with_overrides
from pipeline.runtime.launch import pretrain
from tests.support.configs import tiny_overrides

pytestmark = pytest.mark.usefixtures("ray_session")

VIT = {
    "model.backbone": "timm:vit_tiny_patch16_224",
    "model.timm_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


@pytest.mark.parametrize(
    ("config_name", "overrides", "losses"),
    [
        ("quickstart.yaml", {}, ("train/info_nce",)),
        (
            "hcsc_synthetic.yaml",
            {
                "method.warmup_epochs": 1,
                "method.hierarchy": [12, 6, 3],
                "method.clustering.niter": 5,
                "method.clustering.nredo": 1,
            },
            ("train/instance_loss", "train/prototype_loss"),
        ),
    ],
    ids=["moco", "hcsc"],
)
def test_two_epochs_on_a_tiny_vit(
    tmp_path: Path, mlflow_uri: str, config_name: str, overrides: dict[str, object], losses: tuple[str, ...]
) -> None:
    values = tiny_overrides(tmp_path, mlflow_uri, **{**VIT, **overrides, "eval.linear.enabled": False})
    result = pretrain(with_overrides(load_config(config_name), values))
    client = MlflowClient(mlflow_uri)
    assert client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert client.get_run(result.mlflow_run_id).data.params["model.backbone"] == "timm:vit_tiny_patch16_224"
    for key in losses:
        history = client.get_metric_history(result.mlflow_run_id, key)
        assert history and all(math.isfinite(metric.value) for metric in history), key
    assert 0.0 <= result.metrics["knn/top1"] <= 100.0
    assert client.get_metric_history(result.mlflow_run_id, "final/knn/top1")
