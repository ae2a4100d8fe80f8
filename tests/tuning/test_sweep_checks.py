"""What a sweep and its report check before they record or create anything."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Param

from pipeline.config import ConfigError
from pipeline.record import names, store
from pipeline.record import sweep as sweep_record
from pipeline.runtime.cluster import ResourceError
from tests.support.configs import TINY
from tuning import report, sweep
from tuning.grid import GridError, load_grid


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
    database = tmp_path / "mlflow.db"
    grid = load_grid(
        write_grid(tmp_path, **{"ray.storage_path": str(blocker), "tracking.uri": f"sqlite:///{database}"})
    )
    with pytest.raises(ConfigError, match=f"ray.storage_path = '{blocker}' cannot hold runs: {blocker} is a file"):
        sweep.run_sweep(grid, max_concurrent=1)
    assert not database.exists()


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_refused_for_resources_refuses_before_its_parent_run(tmp_path: Path, mlflow_uri: str) -> None:
    fixed = {"ray.storage_path": str(tmp_path / "runs"), "tracking.uri": mlflow_uri, "ray.cpus_per_worker": 4}
    grid = load_grid(write_grid(tmp_path, **fixed))
    with pytest.raises(ResourceError, match=r"trial checks-000: .* 8 CPU wanted, 2 in the cluster"):
        sweep.run_sweep(grid, max_concurrent=1)
    client = store.mlflow_client(mlflow_uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    assert (client.search_runs(experiments) if experiments else []) == []


def test_report_on_a_mistyped_store_is_one_line_and_creates_nothing(
    tmp_path: Path, mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    typo = tmp_path / "mlfow.db"
    assert report.main(["--sweep", "anything", "--tracking-uri", f"sqlite:///{typo}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no MLflow store at {typo} (from sqlite:///{typo}): check the store URI"
    ]
    assert not typo.exists()
    store.check_store(mlflow_uri)
    capsys.readouterr()  # MLflow's own lines while it creates the store
    assert report.main(["--sweep", "anything", "--tracking-uri", mlflow_uri]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: no sweep named or with parent run id 'anything' in {mlflow_uri}"
    ]


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_whose_tuner_crashes_ends_its_parent_failed_with_the_reason(
    tmp_path: Path, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray import tune

    def crash(self: object) -> None:
        raise RuntimeError("Tune's experiment state could not be written\nOSError: disk full")

    monkeypatch.setattr(tune.Tuner, "fit", crash)
    grid = load_grid(write_grid(tmp_path, **{"ray.storage_path": str(tmp_path / "runs"), "tracking.uri": mlflow_uri}))
    with pytest.raises(RuntimeError, match="disk full"):
        sweep.run_sweep(grid, max_concurrent=1)
    parent = report.find_parent(mlflow_uri, "checks")
    assert parent.info.status == "FAILED"
    assert parent.data.tags[names.ERROR_TAG] == "Tune failed: OSError: disk full"


def test_asha_lets_a_trial_that_reaches_the_last_epoch_finish_and_stops_a_weak_one_at_a_rung(tmp_path: Path) -> None:
    from ray.tune.schedulers import TrialScheduler

    path = tmp_path / "asha.yaml"
    grid = {
        "name": "asha",
        "metric": "knn/top1",
        "search": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "full": {
            "base": "quickstart.yaml",
            "set": {**TINY, "train.epochs": 3},
            "axes": {"method.temperature": [0.1, 0.2]},
        },
    }
    path.write_text(yaml.safe_dump(grid))
    scheduler = sweep.asha_scheduler(load_grid(str(path)))
    strong, weak = SimpleNamespace(trial_id="strong"), SimpleNamespace(trial_id="weak")
    for trial in (strong, weak):
        scheduler.on_trial_add(None, trial)
    for epoch in (1, 2, 3):
        # At its last epoch a trial goes on to its evaluation and final figures: a stop there would kill that.
        assert scheduler.on_trial_result(None, strong, {"epoch": epoch, "knn/top1": 50.0}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, weak, {"epoch": 1, "knn/top1": 10.0}) == TrialScheduler.STOP


def test_trials_are_selected_by_position_range_or_name_in_grid_order_and_a_bad_selection_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = load_grid(write_grid(tmp_path))
    assert sweep.parse_selection("1,0", grid) == ["checks-000", "checks-001"]
    assert sweep.parse_selection("0-1", grid) == ["checks-000", "checks-001"]
    assert sweep.parse_selection("checks-001", grid) == ["checks-001"]
    for bad, message in [("2", "'2' is outside the grid's positions 0-1"), ("1-0", "'1-0' is outside"), ("x", "'x'")]:
        with pytest.raises(GridError, match=message):
            sweep.parse_selection(bad, grid)
    # The command refuses it before anything runs: no Ray, no store.
    assert sweep.main(["--grid", str(write_grid(tmp_path)), "--trials", "0,5"]) == 2
    assert "--trials: '5' is outside the grid's positions 0-1" in capsys.readouterr().err


def test_a_done_trial_is_kept_only_under_the_settings_it_was_done_with(tmp_path: Path, mlflow_uri: str) -> None:
    grid = load_grid(write_grid(tmp_path, **{"tracking.uri": mlflow_uri}))
    assert sweep.kept_trials(grid, mlflow_uri) == set()  # no sweep of that name yet
    parent = sweep.find_or_create_parent(mlflow_uri, "contrastive", grid)
    client, experiment = MlflowClient(mlflow_uri), store.experiment_id(mlflow_uri, "contrastive")
    for trial, complete in zip(grid.trials, [True, False], strict=True):
        tags = {names.PARENT_TAG: parent, names.TRIAL_TAG: trial.name}
        if complete:
            tags[names.COMPLETE_TAG] = "t"
        run_id = client.create_run(experiment, tags=tags).info.run_id
        # Recorded on another machine: its own data folder and store, which do not count.
        settings = {**sweep.trial_settings(trial.config), "data.root": "/elsewhere", "tracking.uri": "sqlite:///x"}
        client.log_batch(run_id, params=[Param(key, value) for key, value in settings.items()])
        client.set_terminated(run_id, status="FINISHED")
    # The second trial finished pretraining but was never tagged complete (its evaluation did not end): run again.
    assert sweep.kept_trials(grid, mlflow_uri) == {"checks-000"}
    changed = load_grid(write_grid(tmp_path, **{"tracking.uri": mlflow_uri, "optim.lr": 0.5}))
    with pytest.raises(sweep_record.SweepRecordError, match=r"checks-000 is done .* optim.lr = 0.5 \(done with 0.12\)"):
        sweep.kept_trials(changed, mlflow_uri)
