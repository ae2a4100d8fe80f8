"""Tiny experiment configs that train in seconds on 2 CPUs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ExperimentConfig, load_config, with_overrides

TINY = {
    "data.synthetic.num_train": 64,
    "data.synthetic.num_test": 32,
    "data.num_workers": 0,
    "model.width": 4,
    "method.queue_size": 64,
    "train.batch_size": 16,
    "train.epochs": 2,
    "train.log_every_steps": 2,
    "eval.knn_k": 10,
    "eval.pixel_baseline": False,
    "ray.num_workers": 2,
    "ray.cpus_per_worker": 1,
    # The reference path (PIL views in the loader); the batched device views have their own run tests.
    "data.augment_on": "loader",
    # Seconds per run that only their own tests need (tiny_reference and the picture tests turn them on).
    "tracking.log_model": False,
    "eval.pictures": False,
}


def tiny_overrides(tmp_path: Path, mlflow_uri: str, **overrides: object) -> dict[str, object]:
    """Return the dotted overrides that shrink the quickstart to seconds, storing under ``tmp_path``."""
    values: dict[str, object] = {**TINY, "ray.storage_path": str(tmp_path / "runs"), "tracking.uri": mlflow_uri}
    values.update(overrides)
    return values


def tiny_config(tmp_path: Path, mlflow_uri: str, **overrides: object) -> ExperimentConfig:
    """Return the quickstart shrunk to seconds: 64 images, width-4 ResNet-18, 2 workers, 2 epochs."""
    return with_overrides(load_config("quickstart.yaml"), tiny_overrides(tmp_path, mlflow_uri, **overrides))


@dataclass(frozen=True)
class Reference:
    """The uninterrupted tiny run that the resume and fault tests compare against, and where it is recorded."""

    result: object
    mlflow_uri: str
