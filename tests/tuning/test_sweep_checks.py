"""What a sweep and its report check before they record or create anything."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline import tracking
from pipeline.config import ConfigError
from tests.support.configs import TINY
from tuning import report, sweep
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


def test_report_on_a_mistyped_store_is_one_line_and_creates_nothing(
    tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "mlfow.db"
    assert report.main(["--sweep", "anything", "--tracking-uri", f"sqlite:///{typo}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no MLflow store at {typo} (from sqlite:///{typo}): check the store URI"
    ]
    assert not typo.exists()
    tracking.check_store(mlflow_uri)
    capsys.readouterr()  # MLflow's own lines while it creates the store
    assert report.main(["--sweep", "anything", "--tracking-uri", mlflow_uri]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no sweep named or with parent run id 'anything' in {mlflow_uri}"
    ]
