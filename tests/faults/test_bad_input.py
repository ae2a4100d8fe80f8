"""Bad input and short resources: one line before any work, and nothing already recorded is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from mlflow import MlflowClient

from pipeline.data.errors import DataError
from pipeline.runtime.cluster import ResourceError
from pipeline.runtime.launch import pretrain
from pipeline.training.checkpoints import RUN_ID_FILE
from tests.support.configs import tiny_config, tiny_overrides

pytestmark = pytest.mark.usefixtures("ray_session")

ROOT = Path(__file__).resolve().parents[2]


def cli(overrides: dict[str, object], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Return the finished ``python -m pipeline.pretrain`` on the quickstart with ``overrides``."""
    arguments = [sys.executable, "-m", "pipeline.pretrain", "--config", "quickstart.yaml"]
    for key, value in overrides.items():
        arguments += ["--set", f"{key}={value}"]
    return subprocess.run(
        arguments, capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, **(env or {})}
    )


def runs_in(uri: str) -> list:
    """Return every MLflow run in the store (none when the store has no experiment yet)."""
    client = MlflowClient(uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def test_short_resources_record_nothing_and_a_finished_run_is_never_failed(tmp_path: Path, mlflow_uri: str) -> None:
    with pytest.raises(ResourceError, match=r"ray.num_workers=4 .* 4 CPU wanted, 2 in the cluster"):
        pretrain(tiny_config(tmp_path, mlflow_uri, **{"ray.num_workers": 4, "ray.run_name": "short"}))
    assert not (tmp_path / "runs" / "short" / RUN_ID_FILE).exists()
    assert runs_in(mlflow_uri) == []

    one_worker = tiny_config(tmp_path, mlflow_uri, **{"ray.num_workers": 1, "ray.run_name": "short"})
    finished = pretrain(one_worker, local=True)
    client = MlflowClient(mlflow_uri)
    assert client.get_run(finished.mlflow_run_id).data.params["ray.num_workers"] == "1"

    # A cluster address nobody answers: the rerun can only succeed if it never starts or joins Ray.
    overrides = tiny_overrides(tmp_path, mlflow_uri, **{"ray.num_workers": 4, "ray.run_name": "short"})
    again = cli(overrides, env={"RAY_ADDRESS": "127.0.0.1:9"})
    assert again.returncode == 0, again.stderr
    assert "already finished (2/2 epochs): reporting its result" in again.stdout
    run = client.get_run(finished.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["ray.num_workers"] == "1"
    assert [value for key, value in run.data.tags.items() if key.startswith("attempt.")] == ["ray.num_workers: 1 -> 4"]
    assert len(runs_in(mlflow_uri)) == 1


def test_batch_larger_than_the_data_set_fails_before_anything(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    config = tiny_config(tmp_path, f"sqlite:///{store}", **{"data.synthetic.num_train": 16, "train.batch_size": 32})
    with pytest.raises(DataError, match=r"train.batch_size = 32 needs 16 images per worker.*16 images for 2 worker"):
        pretrain(config)
    assert not (tmp_path / "runs").exists() and not store.exists()


@pytest.mark.parametrize("uri", ["sqlite:////proc/nope/mlflow.db"])
def test_unusable_tracking_store_is_one_line_and_exit_2(tmp_path: Path, uri: str) -> None:
    done = cli(tiny_overrides(tmp_path, uri))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow tracking store {uri} cannot be written")
    assert not (tmp_path / "runs").exists()


def write_folder(root: Path, corrupt: str | None) -> None:
    """Write a 2-class image folder (train 32, val 8 PNGs); ``corrupt`` names a train file holding garbage."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 32), ("val", 8)):
        for index in range(count):
            folder = root / split / f"class{index % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(folder / f"{index:02d}.png")
    if corrupt is not None:
        (root / "train" / corrupt).write_bytes(b"\xff\xd8 not a jpeg at all")


def test_corrupt_image_met_in_training_stops_with_one_line(tmp_path: Path, mlflow_uri: str) -> None:
    root = tmp_path / "images"
    write_folder(root, corrupt="class1/broken.jpg")
    config = tiny_config(
        tmp_path,
        mlflow_uri,
        **{"data.source": "image_folder", "data.root": str(root), "ray.num_workers": 1, "ray.run_name": "corrupt"},
    )
    with pytest.raises(DataError) as error:
        pretrain(config)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot decode image" in message and "broken.jpg" in message and "data.skip_corrupt" in message
    run_id = (tmp_path / "runs" / "corrupt" / RUN_ID_FILE).read_text().strip()
    assert MlflowClient(mlflow_uri).get_run(run_id).info.status == "FAILED"


def test_corrupt_image_met_by_the_pixel_baseline_records_nothing(tmp_path: Path, mlflow_uri: str) -> None:
    root = tmp_path / "images"
    write_folder(root, corrupt="class0/broken.jpg")
    config = tiny_config(
        tmp_path, mlflow_uri, **{"data.source": "image_folder", "data.root": str(root), "eval.pixel_baseline": True}
    )
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):
        pretrain(config)
    assert runs_in(mlflow_uri) == []
