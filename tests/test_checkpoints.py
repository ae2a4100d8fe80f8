"""Checkpoint folders: the metrics file beside the full state, and reading checkpoints written before it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.checkpoints import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    checkpoint_metrics,
    latest_checkpoint,
    load_checkpoint,
    write_checkpoint,
)


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


def test_metrics_of_a_checkpoint_without_metrics_file_come_from_the_state(tmp_path: Path) -> None:
    folder = tmp_path / "epoch_0001"
    folder.mkdir()
    torch.save(state_with({"knn/top1": 12.5}), folder / CHECKPOINT_FILE)
    assert checkpoint_metrics(folder) == {"knn/top1": 12.5}


def test_metrics_of_a_folder_without_checkpoint_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt in checkpoint folder"):
        checkpoint_metrics(tmp_path)
