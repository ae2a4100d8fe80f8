"""Checkpoint folders: the metrics file beside the full state, the manifest, and torn copies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipeline.config import ConfigError, ExperimentConfig, load_config, with_overrides
from pipeline.training.checkpoints import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    RUN_CONFIG_FILE,
    checkpoint_folders,
    checkpoint_metrics,
    epoch_dir_name,
    incomplete_reason,
    latest_checkpoint,
    load_checkpoint,
    resolve_run,
    write_checkpoint,
    write_run_config,
)
from tests.support.damage import corrupt_in_place


def state_with(metrics: dict[str, float]) -> dict[str, object]:
    """Return a small checkpoint state holding ``metrics``."""
    return {"epoch": 3, "global_step": 30, "method": {"w": torch.ones(2)}, "metrics": metrics}


def test_write_checkpoint_puts_metrics_beside_the_state(tmp_path: Path) -> None:
    folder = tmp_path / "epoch_0003"
    folder.mkdir()
    write_checkpoint(folder, state_with({"knn/top1": 81.0, "train/loss": 5.25}))
    assert (folder / METRICS_FILE).is_file() and latest_checkpoint(tmp_path) == folder
    assert checkpoint_metrics(folder) == {"knn/top1": 81.0, "train/loss": 5.25}
    assert load_checkpoint(folder)["global_step"] == 30


def write_epoch(run_dir: Path, epoch: int) -> Path:
    """Return a complete checkpoint folder for ``epoch`` written under ``run_dir``."""
    folder = run_dir / f"epoch_{epoch:04d}"
    folder.mkdir(parents=True)
    write_checkpoint(folder, {**state_with({"epoch": float(epoch)}), "epoch": epoch})
    return folder


def test_a_complete_checkpoint_has_a_manifest_written_last(tmp_path: Path) -> None:
    folder = write_epoch(tmp_path, 1)
    assert incomplete_reason(folder) is None
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["epoch"] == 1
    assert manifest["files"][CHECKPOINT_FILE] == (folder / CHECKPOINT_FILE).stat().st_size
    for name in (CHECKPOINT_FILE, METRICS_FILE):
        assert manifest["sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda folder: (folder / MANIFEST_FILE).unlink(), "no manifest.json"),
        (lambda folder: (folder / MANIFEST_FILE).write_text("{"), "unreadable manifest.json"),
        (lambda folder: (folder / METRICS_FILE).unlink(), "metrics.json is missing"),
        (
            lambda folder: (folder / CHECKPOINT_FILE).write_bytes((folder / CHECKPOINT_FILE).read_bytes()[:100]),
            "checkpoint.pt has 100 bytes of",
        ),
        (lambda folder: corrupt_in_place(folder / CHECKPOINT_FILE), "checkpoint.pt is corrupt"),
        (lambda folder: corrupt_in_place(folder / METRICS_FILE), "metrics.json is corrupt"),
    ],
)
def test_a_torn_latest_checkpoint_is_skipped_for_the_previous_one(tmp_path: Path, damage: object, reason: str) -> None:
    first = write_epoch(tmp_path, 1)
    second = write_epoch(tmp_path, 2)
    assert latest_checkpoint(tmp_path) == second
    damage(second)
    assert reason in incomplete_reason(second)
    assert latest_checkpoint(tmp_path) == first
    assert checkpoint_folders(tmp_path) == [second, first]


def test_no_checkpoint_in_an_empty_or_missing_run(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_a_manifest_without_checksums_is_checked_by_size(tmp_path: Path) -> None:
    folder = write_epoch(tmp_path, 1)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({"epoch": 1, "files": manifest["files"]}))
    assert incomplete_reason(folder) is None
    (folder / METRICS_FILE).write_text("{}")
    assert "metrics.json has 2 bytes of" in incomplete_reason(folder)


def started_run(tmp_path: Path, **overrides: object) -> tuple[Path, ExperimentConfig]:
    """Return the storage folder of a run named 'explicit' with one complete checkpoint, and its config."""
    config = with_overrides(load_config("quickstart.yaml"), {"ray.run_name": "explicit", **overrides})
    run_dir = tmp_path / "explicit"
    write_run_config(run_dir, config)
    write_epoch(run_dir, 1)
    return tmp_path, config


def test_resuming_under_another_optimiser_or_network_is_refused_naming_each_key(tmp_path: Path) -> None:
    storage, config = started_run(tmp_path)
    changed = with_overrides(config, {"optim.name": "lars", "model.width": 32, "optim.lr": 0.5})
    with pytest.raises(ConfigError) as refused:
        resolve_run(changed, storage)
    message = str(refused.value)
    assert "optim.name = 'lars' (the run was started with 'sgd')" in message
    assert "model.width = 32 (the run was started with 16)" in message
    assert "optim.lr" not in message and "another ray.run_name" in message


def test_resuming_with_other_schedules_or_a_folder_without_config_is_allowed(tmp_path: Path) -> None:
    storage, config = started_run(tmp_path)
    longer = with_overrides(config, {"optim.lr": 0.5, "train.epochs": 20})
    assert resolve_run(longer, storage) == ("explicit", storage / "explicit" / epoch_dir_name(1))
    (storage / "explicit" / RUN_CONFIG_FILE).unlink()
    assert resolve_run(with_overrides(config, {"optim.name": "adamw"}), storage)[1] is not None
