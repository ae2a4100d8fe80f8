"""An unusable ``ray.storage_path`` is one line and exit 2 before Ray starts, with no MLflow store or run touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError
from pipeline.training.checkpoints import check_storage
from tests.support.configs import tiny_overrides

ROOT = Path(__file__).resolve().parents[2]


def file_path(tmp_path: Path) -> Path:
    """Return a plain file where the storage folder should be."""
    path = tmp_path / "runs-file"
    path.write_text("not a folder\n")
    return path


@pytest.mark.parametrize(
    ("storage", "reason"),
    [
        (file_path, "runs-file is a file, not a folder"),
        (lambda tmp_path: Path("/proc/nope/runs"), "/proc cannot be written"),
    ],
)
def test_unusable_storage_path_is_one_line_and_exit_2_before_ray_and_mlflow(
    tmp_path: Path, storage: object, reason: str
) -> None:
    path = storage(tmp_path)
    store = tmp_path / "mlflow.db"
    overrides = tiny_overrides(tmp_path, f"sqlite:///{store}", **{"ray.storage_path": str(path)})
    arguments = [sys.executable, "-m", "pipeline.pretrain", "--config", "quickstart.yaml"]
    for key, value in overrides.items():
        arguments += ["--set", f"{key}={value}"]
    # A cluster address nobody answers: joining or starting Ray before the check would fail differently.
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}
    done = subprocess.run(arguments, capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: ray.storage_path = {str(path)!r} cannot hold runs: ")
    assert reason in lines[0]
    assert not store.exists()


def test_a_missing_storage_folder_is_accepted_and_not_created(tmp_path: Path) -> None:
    check_storage(str(tmp_path / "new" / "runs"))
    assert not (tmp_path / "new").exists()
    below_a_file = file_path(tmp_path) / "below"
    with pytest.raises(ConfigError, match=f"cannot hold runs: {file_path(tmp_path)} is a file, not a folder"):
        check_storage(str(below_a_file))
    with pytest.raises(ConfigError, match="ray.storage_path = '/proc/nope' cannot hold runs"):
        check_storage("/proc/nope")
