"""A checkpoint of the right size but corrupt content: resume falls back to the previous one, evaluate refuses.

Before checksums the size-only manifest accepted it, and ``pipeline.evaluate`` printed a 35-line UnpicklingError.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline import evaluate
from pipeline.config import ExperimentConfig
from pipeline.runtime.launch import announce_torn_checkpoints
from pipeline.training.checkpoints import (
    CHECKPOINT_FILE,
    epoch_dir_name,
    resolve_run,
    write_checkpoint,
    write_run_config,
)
from tests.support.configs import tiny_config
from tests.support.damage import corrupt_in_place


def finished_run_with_a_corrupt_last_checkpoint(tmp_path: Path) -> tuple[ExperimentConfig, Path]:
    """Return the config and folder of a 2-epoch run whose epoch-2 checkpoint is corrupt but of the right size."""
    config = tiny_config(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", **{"ray.run_name": "corrupt"})
    run_dir = tmp_path / "runs" / "corrupt"
    write_run_config(run_dir, config)
    for epoch in (1, 2):
        folder = run_dir / epoch_dir_name(epoch)
        folder.mkdir()
        state = {"epoch": epoch, "global_step": 4 * epoch, "method": {"w": torch.randn(256)}, "metrics": {}}
        write_checkpoint(folder, state)
    corrupt_in_place(run_dir / epoch_dir_name(2) / CHECKPOINT_FILE)
    return config, run_dir


def test_resume_skips_a_corrupt_checkpoint_for_the_previous_one_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, run_dir = finished_run_with_a_corrupt_last_checkpoint(tmp_path)
    name, resume_from = resolve_run(config, tmp_path / "runs")
    assert (name, resume_from) == ("corrupt", run_dir / epoch_dir_name(1))
    announce_torn_checkpoints(run_dir, resume_from)
    assert capsys.readouterr().out.splitlines() == [
        "checkpoint epoch_0002 is unusable (checkpoint.pt is corrupt (its content does not match the manifest's "
        "SHA-256)): resuming from epoch_0001 instead"
    ]


def test_evaluate_refuses_a_corrupt_checkpoint_in_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run_dir = finished_run_with_a_corrupt_last_checkpoint(tmp_path)
    assert evaluate.main(["--run", str(run_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"error: checkpoint {run_dir / epoch_dir_name(2)} is unusable (checkpoint.pt is corrupt (its content does "
        "not match the manifest's SHA-256)): rerun the pretraining command to train that epoch again"
    ]
