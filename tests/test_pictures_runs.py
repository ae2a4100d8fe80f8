"""Pictures during a run: ``eval.pictures_every`` maps the test embeddings every N epochs, the driver the last."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient

from pipeline.runtime.launch import pretrain
from tests.support.configs import tiny_config


def test_maps_every_second_epoch_and_at_the_end_in_the_folder_and_mlflow(tmp_path: Path, mlflow_uri: str) -> None:
    settings = {"ray.num_workers": 1, "train.epochs": 5, "eval.pictures": True, "eval.pictures_every": 2}
    result = pretrain(tiny_config(tmp_path, mlflow_uri, **settings, **{"ray.run_name": "maps"}), local=True)

    expected = [f"embedding_map_epoch_{epoch:04d}.png" for epoch in (2, 4, 5)]
    folder = tmp_path / "runs" / "maps" / "pictures"
    assert sorted(path.name for path in folder.iterdir()) == expected
    listed = MlflowClient(mlflow_uri).list_artifacts(result.mlflow_run_id, "pictures")
    assert sorted(artifact.path for artifact in listed) == [f"pictures/{name}" for name in expected]
    assert all(artifact.file_size > 1000 for artifact in listed)
