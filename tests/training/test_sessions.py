"""The local worker session: checkpoints written into the run folder as Ray Train names them, newest two kept."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.training.checkpoints import checkpoint_folders, incomplete_reason, latest_checkpoint, load_checkpoint
from pipeline.training.sessions import LocalSession


def _state(epoch: int) -> dict:
    """Return a checkpoint state as the training loop's rank 0 hands it over."""
    return {
        "epoch": epoch,
        "global_step": 4 * epoch,
        "method": {"weight": torch.full((3,), float(epoch))},
        "optimizer": {"state": {}, "param_groups": []},
        "scaler": {},
        "metrics": {"train/loss": 1.0 / epoch},
    }


def test_local_session_is_one_cpu_worker(tmp_path: Path) -> None:
    session = LocalSession(tmp_path)
    assert (session.rank, session.world_size, session.device) == (0, 1, torch.device("cpu"))
    assert session.registered_checkpoint() is None


def test_reports_become_complete_epoch_folders_and_only_the_newest_two_stay(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "local"
    session = LocalSession(run_dir)
    for epoch in (1, 2, 3):
        session.report({"train/loss": 1.0 / epoch}, _state(epoch), epoch)

    assert [folder.name for folder in checkpoint_folders(run_dir)] == ["epoch_0003", "epoch_0002"]
    assert all(incomplete_reason(folder) is None for folder in checkpoint_folders(run_dir))
    assert sorted(path.name for path in run_dir.iterdir()) == ["epoch_0002", "epoch_0003"]  # no staging left
    state = load_checkpoint(latest_checkpoint(run_dir))
    assert state["epoch"] == 3 and torch.equal(state["method"]["weight"], torch.full((3,), 3.0))


def test_a_report_without_state_writes_nothing(tmp_path: Path) -> None:
    LocalSession(tmp_path / "run").report({"train/loss": 0.5}, None, 1)
    assert not (tmp_path / "run").exists()


def test_an_epoch_written_again_replaces_the_older_folder(tmp_path: Path) -> None:
    session = LocalSession(tmp_path)
    session.report({}, _state(1), 1)
    replacement = _state(1)
    replacement["method"]["weight"] = torch.zeros(3)
    session.report({}, replacement, 1)
    assert torch.equal(load_checkpoint(tmp_path / "epoch_0001")["method"]["weight"], torch.zeros(3))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the refusal cannot happen")
def test_asking_for_a_gpu_without_one_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ray.gpus_per_worker > 0 asks for a GPU"):
        LocalSession(tmp_path, use_gpu=True)
