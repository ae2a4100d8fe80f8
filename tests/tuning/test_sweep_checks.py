"""What a sweep checks before it records anything: the storage folder of its trials and Tune's state."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError
from tests.support.configs import TINY
from tuning import sweep
from tuning.grid import load_grid


def write_grid(tmp_path: Path, **fixed: object) -> Path:
    """Write a 2-trial grid on the tiny quickstart with ``fixed`` overrides; return its path."""
    grid = {
        "name": "checks",
        "full": {"base": "quickstart.yaml", "set": {**TINY, **fixed}, "axes": {"method.temperature": [0.1, 0.2]}},
    }
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def test_an_unusable_storage_path_stops_the_sweep_before_its_parent_run(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file where the run folders should go\n")
    store = tmp_path / "mlflow.db"
    grid = load_grid(write_grid(tmp_path, **{"ray.storage_path": str(blocker), "tracking.uri": f"sqlite:///{store}"}))
    with pytest.raises(ConfigError, match=f"ray.storage_path = '{blocker}' cannot hold runs: {blocker} is a file"):
        sweep.plan_sweep(grid)
    assert not store.exists()
