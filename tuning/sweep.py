"""Command line: ``python -m tuning.sweep --grid FILE [--quick] [--set key=value ...] [--max-concurrent N]``.

A Ray Tune grid in which each trial is one whole pretraining run (``pipeline.launch.pretrain``: its own
TorchTrainer and workers, then the grid's evaluation). One MLflow parent run per sweep, one child run
per trial tagged with its axis values, seed and name. Every trial is validated before anything runs.
Run the same command again after an interrupt or a failure: finished trials are kept, the others
resume from their checkpoints and their MLflow runs; nothing is recorded twice. A failed trial is
reported with its error and the other trials go on. The report (``tuning.report``) is written at the
end, and can be run any time while the sweep is in progress. Exit codes: 0 every trial finished, 1
some failed, 130 interrupted (Ctrl+C) with trials unfinished, 2 bad input; the parent run ends
FINISHED, FAILED or KILLED accordingly and is RUNNING again while a re-run resumes it. With the grid's
``search: asha`` every trial reports its metric each epoch (read back from its MLflow run) and ASHA
stops the weaker ones at its rungs; a stopped trial's run ends KILLED with the tag ``stopped_early``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import tracking
from pipeline.config import ConfigError, ExperimentConfig, build_config, with_overrides
from pipeline.tracking import STOPPED_TAG
from tuning.grid import Grid, GridError, load_grid, parse_assignments

SWEEP_TAG = "sweep"
ERROR_TAG = "error"
# On a trial's child run that an interrupted sweep left unfinished: when, and that a re-run resumes it.
INTERRUPTED_TAG = "interrupted"
TRIALS_ARTIFACT = "trials.json"
# The trial's own driver needs no CPU of its own: its TorchTrainer's workers reserve the real ones.
TRIAL_DRIVER_RESOURCES = {"cpu": 0.01}
# Reported with a trial's final figures: Tune's results carry bookkeeping keys even for trials that never reported.
FINISHED_KEY = "sweep/finished"
EPOCH_KEY = "epoch"
PROGRESS_POLL_S = 2.0


@dataclass(frozen=True)
class SweepPlan:
    """Where a sweep lives: its grid, its Tune folder, its MLflow store and parent run, and each trial's config."""

    grid: Grid
    tune_path: Path
    tracking_uri: str
    parent_run_id: str
    configs: dict[str, ExperimentConfig]


@dataclass(frozen=True)
class SweepOutcome:
    """How one run of the sweep command ended: the failed trials ``(name, error)`` and the unfinished ones."""

    failed: list[tuple[str, str]]
    unfinished: list[str]
    stopped: list[str]

    @property
    def status(self) -> str:
        """Return the parent run's MLflow status: KILLED if interrupted, FAILED if a trial failed, else FINISHED."""
        if self.unfinished:
            return "KILLED"
        return "FAILED" if self.failed else "FINISHED"

    @property
    def reason(self) -> str | None:
        """Return why the sweep did not finish (the parent run's ``error`` tag), None if it did."""
        if self.unfinished:
            return f"interrupted with {len(self.unfinished)} trial(s) unfinished: {', '.join(self.unfinished)}"
        if self.failed:
            return f"{len(self.failed)} trial(s) failed: {', '.join(name for name, _ in self.failed)}"
        return None

    @property
    def exit_code(self) -> int:
        """Return the command's exit code: 130 if interrupted, 1 if a trial failed, else 0."""
        return {"KILLED": 130, "FAILED": 1, "FINISHED": 0}[self.status]


def trial_metrics(result: Any, config: ExperimentConfig) -> dict[str, float]:
    """Return a finished pretraining's figures for Tune, named as in MLflow: last epoch's and ``eval/...`` ones."""
    protocol = config.eval.linear.protocol
    metrics = {key: float(value) for key, value in result.metrics.items() if isinstance(value, int | float)}
    for network, figures in (result.evaluation or {}).items():
        metrics.update({f"eval/{protocol}/{network}/{key}": float(value) for key, value in figures.items()})
    return {**metrics, EPOCH_KEY: float(config.train.epochs), FINISHED_KEY: 1.0}


def run_trial(trial_config: dict[str, Any]) -> None:
    """Tune's function trainable: pretrain (and evaluate) one grid point, then report its final metrics."""
    from ray import tune

    from pipeline.launch import pretrain

    config = build_config(trial_config["config"])
    progress = trial_config.get("progress_metric")
    try:
        result = pretrain(config) if progress is None else pretrain_reporting(config, progress)
    except Exception as exc:
        record_failure(config, exc)
        raise
    tune.report(trial_metrics(result, config))


def pretrain_reporting(config: ExperimentConfig, metric: str) -> Any:
    """Return ``pretrain(config)``'s result after reporting each epoch's ``metric`` to Tune as it lands in MLflow.

    Training runs in a thread; this one reads the trial's MLflow run every few seconds, so a scheduler
    (ASHA) can stop the trial between epochs without any hook inside the training workers.
    """
    from ray import tune

    from pipeline.launch import pretrain

    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["result"] = pretrain(config)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's own thread below
            outcome["error"] = exc

    worker = threading.Thread(target=train, name="pretrain", daemon=True)
    worker.start()
    client, reported, child = tracking.mlflow_client(config.tracking.uri), 0, None
    while True:
        running = worker.is_alive()
        # The child run is looked up until it exists, then only its metric history is read.
        child = child or find_child(config)
        history = sorted(client.get_metric_history(child, metric), key=lambda m: m.step) if child else []
        for point in history[reported:]:
            tune.report({metric: point.value, EPOCH_KEY: point.step + 1})
        reported = len(history)
        if not running:
            break
        worker.join(timeout=PROGRESS_POLL_S)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def find_child(config: ExperimentConfig) -> str | None:
    """Return the id of the trial's child run in MLflow, None before it is opened."""
    client = tracking.mlflow_client(config.tracking.uri)
    experiment_id = tracking.experiment_id(config.tracking.uri, config.tracking.experiment)
    trial = config.tracking.tags["trial"]
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{config.tracking.parent_run_id}' and tags.trial = '{trial}'",
    )
    return found[0].info.run_id if found else None


def record_failure(config: ExperimentConfig, error: BaseException) -> None:
    """Tag the trial's child run with ``error`` (creating a FAILED one when it failed before opening its run)."""
    client = tracking.mlflow_client(config.tracking.uri)
    experiment_id = tracking.experiment_id(config.tracking.uri, config.tracking.experiment)
    child = find_child(config)
    message = (str(error).strip().splitlines() or [type(error).__name__])[-1][:5000]
    if child:
        # A trial the scheduler stopped errors as its workers are torn down: that is no failure to record.
        if STOPPED_TAG not in client.get_run(child).data.tags:
            client.set_tag(child, ERROR_TAG, message)
        return
    tags = {**config.tracking.tags, tracking.PARENT_TAG: config.tracking.parent_run_id, ERROR_TAG: message}
    run = client.create_run(experiment_id, tags=tags, run_name=config.tracking.run_name)
    client.set_terminated(run.info.run_id, status="FAILED")


def grid_trials_record(grid: Grid) -> list[dict[str, Any]]:
    """Return the JSON record of the grid's trials (name, axis values, seed) kept with the parent run."""
    return [{"name": t.name, "axis_values": t.axis_values, "seed": t.seed} for t in grid.trials]


def plan_sweep(grid: Grid, uri: str, tune_path: Path) -> SweepPlan:
    """Return the sweep's plan after opening (or finding) its MLflow parent run; each trial's config points at it."""
    parent = find_or_create_parent(uri, grid.trials[0].config.tracking.experiment, grid)
    configs = {}
    for trial in grid.trials:
        tags = {**trial.config.tracking.tags, **trial.tags(), SWEEP_TAG: grid.sweep_name}
        configs[trial.name] = with_overrides(
            trial.config,
            {
                "ray.run_name": trial.name,
                "ray.resume": "auto",
                "tracking.uri": uri,
                "tracking.parent_run_id": parent,
                "tracking.run_name": trial.name,
                "tracking.tags": tags,
            },
        )
    return SweepPlan(grid, tune_path, uri, parent, configs)


def find_or_create_parent(uri: str, experiment: str, grid: Grid) -> str:
    """Return the id of the sweep's parent run: the one tagged with its name, else a new one holding the grid."""
    client = tracking.mlflow_client(uri)
    experiment_id = tracking.experiment_id(uri, experiment)
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.{SWEEP_TAG} = '{grid.sweep_name}' and tags.sweep_role = 'parent'"
    )
    if found:
        parent = found[0].info.run_id
        recorded = json.loads(Path(client.download_artifacts(parent, TRIALS_ARTIFACT)).read_text())
        if recorded != json.loads(json.dumps(grid_trials_record(grid))):
            raise GridError(
                f"sweep {grid.sweep_name} already exists (MLflow run {parent}) with other trials: "
                f"rename the grid or remove the old sweep to run a changed grid"
            )
        client.update_run(parent, status="RUNNING")
        return parent
    tags = {SWEEP_TAG: grid.sweep_name, "sweep_role": "parent", "grid": str(grid.path)}
    run = client.create_run(experiment_id, tags=tags, run_name=grid.sweep_name)
    handle = tracking.RunHandle(uri, experiment_id, run.info.run_id)
    spec = grid.spec
    tracking.log_params(
        handle,
        {"grid": spec.name, "quick": grid.quick, "metric": spec.metric, "mode": spec.mode, "trials": len(grid.trials)},
    )
    tracking.log_text(handle, json.dumps(grid_trials_record(grid), indent=2), TRIALS_ARTIFACT)
    tracking.log_text(handle, grid.path.read_text(), f"grid/{grid.path.name}")
    return run.info.run_id


def actor_demand(config: ExperimentConfig) -> dict[str, float]:
    """Return the CPUs and GPUs the method's run-scoped actors reserve for one trial."""
    from pipeline.methods import get_method
    from pipeline.resources import required_resources

    return required_resources(get_method(config.method.name).resources(config))


def trial_demand(config: ExperimentConfig, actors: dict[str, float]) -> dict[str, float]:
    """Return the CPUs and GPUs one trial holds: its workers, its method's ``actors`` and its own driver."""
    workers = max(config.ray.num_workers, 1)
    return {
        "CPU": workers * config.ray.cpus_per_worker + actors["CPU"] + TRIAL_DRIVER_RESOURCES["cpu"],
        "GPU": workers * config.ray.gpus_per_worker + actors["GPU"],
    }


def check_cluster(configs: dict[str, ExperimentConfig], max_concurrent: int) -> int:
    """Return how many trials run at once; raise ResourceError naming a trial the cluster cannot hold."""
    import ray

    from pipeline.cluster import ResourceError, check_resources, cluster_address

    available = ray.cluster_resources()
    fits = max_concurrent
    for name, config in configs.items():
        actors = actor_demand(config)
        try:
            check_resources(config.ray, cluster_address(config.ray) is None, actors)
        except ResourceError as exc:
            raise ResourceError(f"trial {name}: {exc}") from None
        for kind, need in trial_demand(config, actors).items():
            if need > 0:
                fits = min(fits, int(available.get(kind, 0.0) // need))
    return max(1, fits)


def asha_scheduler(grid: Grid) -> Any:
    """Return the grid's ASHA scheduler (rungs in epochs, up to the longest trial's), None for a plain grid."""
    if grid.spec.search != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        time_attr=EPOCH_KEY,
        metric=grid.spec.metric,
        mode=grid.spec.mode,
        max_t=max(trial.config.train.epochs for trial in grid.trials),
        grace_period=grid.spec.asha.grace_period,
        reduction_factor=grid.spec.asha.reduction_factor,
    )


def mark_stopped(trial_config: dict[str, Any], epochs: int) -> None:
    """End the MLflow run of a trial the scheduler stopped: status KILLED, tag ``stopped_early`` = epochs trained."""
    config = build_config(trial_config["config"])
    child = find_child(config)
    if child is not None:
        client = tracking.mlflow_client(config.tracking.uri)
        client.set_tag(child, STOPPED_TAG, str(epochs))
        end_killed(client, child)


def settle_stopped(trial_config: dict[str, Any]) -> bool:
    """Return whether the scheduler stopped the trial; if so end its run KILLED, without an ``error`` tag.

    Called once Tune has ended every trial: a stopped trial's processes may have written FAILED and an
    error after ``mark_stopped`` ran, while its workers were being torn down.
    """

    config = build_config(trial_config["config"])
    child = find_child(config)
    client = tracking.mlflow_client(config.tracking.uri)
    if child is None or STOPPED_TAG not in client.get_run(child).data.tags:
        return False
    end_killed(client, child)
    return True


def end_killed(client: Any, run_id: str) -> None:
    """End a stopped trial's run KILLED and drop any ``error`` tag its torn-down workers left."""
    run = client.get_run(run_id)
    if ERROR_TAG in run.data.tags:
        client.delete_tag(run_id, ERROR_TAG)
    if run.info.status != "KILLED":
        client.set_terminated(run_id, status="KILLED")


def end_interrupted(config: ExperimentConfig) -> bool:
    """Return whether the trial's child run was left RUNNING by an interrupt; if so end it KILLED, tagged why.

    Tune stops an interrupted trial's driver without letting it record its end, so the sweep does it.
    """
    child = find_child(config)
    if child is None:
        return False
    client = tracking.mlflow_client(config.tracking.uri)
    if client.get_run(child).info.status != "RUNNING":
        return False
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_tag(child, INTERRUPTED_TAG, f"{when}: the sweep was interrupted; run it again to resume this trial")
    client.set_terminated(child, status="KILLED")
    return True


def end_parent(plan: SweepPlan, status: str, reason: str | None) -> None:
    """End the sweep's parent run with ``status``: the ``error`` tag says why it did not finish (dropped if it did)."""
    client = tracking.mlflow_client(plan.tracking_uri)
    if reason is not None:
        client.set_tag(plan.parent_run_id, ERROR_TAG, reason)
    elif ERROR_TAG in client.get_run(plan.parent_run_id).data.tags:
        client.delete_tag(plan.parent_run_id, ERROR_TAG)
    client.set_terminated(plan.parent_run_id, status=status)


def run_sweep(grid: Grid, max_concurrent: int) -> tuple[SweepPlan, SweepOutcome]:
    """Run (or resume) the sweep until it ends or is interrupted; return its plan and how it ended."""
    from ray import tune

    from pipeline.checkpoints import check_storage
    from pipeline.cluster import ensure_ray, storage_root
    from tuning.callbacks import EarlyStopRecorder

    reference = grid.trials[0].config
    # Every check that can refuse the sweep runs before its MLflow parent run exists: storage, store, resources.
    storage = storage_root(reference.ray)
    check_storage(storage)
    uri = tracking.reachable_store(reference.tracking)
    ensure_ray(reference.ray)
    concurrent = check_cluster({trial.name: trial.config for trial in grid.trials}, max_concurrent)
    plan = plan_sweep(grid, uri, Path(storage) / "sweeps" / grid.sweep_name)
    trainable = tune.with_resources(run_trial, TRIAL_DRIVER_RESOURCES)
    if tune.Tuner.can_restore(str(plan.tune_path)):
        print(f"resuming sweep {grid.sweep_name} from {plan.tune_path}: finished trials are kept")
        tuner = tune.Tuner.restore(str(plan.tune_path), trainable, resume_errored=True)
    else:
        asha = grid.spec.search == "asha"
        space = {
            "config": tune.grid_search([config.model_dump(mode="json") for config in plan.configs.values()]),
            "progress_metric": grid.spec.metric if asha else None,
        }
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, scheduler=asha_scheduler(grid)),
            run_config=tune.RunConfig(
                name=grid.sweep_name,
                storage_path=str(plan.tune_path.parent),
                verbose=0,
                log_to_file=True,
                callbacks=[EarlyStopRecorder()] if asha else None,
            ),
        )
    print(
        f"sweep {grid.sweep_name}: {len(grid.trials)} trials, up to {concurrent} at once; "
        f"MLflow parent run {plan.parent_run_id} in {plan.tracking_uri}"
    )
    # On SIGINT Tune saves its state and fit() returns: a trial that neither finished, failed nor was stopped
    # by the scheduler is unfinished.
    try:
        results = tuner.fit()
    except BaseException as exc:
        # The parent run exists by now: however Tune itself ends, it must not stay RUNNING.
        interrupted = isinstance(exc, KeyboardInterrupt)
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        end_parent(
            plan, "KILLED" if interrupted else "FAILED", f"{'interrupted' if interrupted else 'Tune failed'}: {detail}"
        )
        raise
    failed, finished, stopped = [], set(), []
    for result in results:
        name = result.config["config"]["ray"]["run_name"] if result.config else "?"
        if result.error is not None:
            failed.append((name, str(result.error).strip().splitlines()[-1]))
        elif (result.metrics or {}).get(FINISHED_KEY):
            finished.add(name)
        elif grid.spec.search == "asha" and result.config and settle_stopped(result.config):
            stopped.append(name)
    done = finished | set(stopped) | {name for name, _ in failed}
    unfinished = [trial.name for trial in grid.trials if trial.name not in done]
    for name in unfinished:
        end_interrupted(plan.configs[name])
    return plan, SweepOutcome(failed, unfinished, stopped)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the sweep and its report; return the exit code (1 if a trial failed)."""
    parser = argparse.ArgumentParser(prog="python -m tuning.sweep", description=__doc__)
    parser.add_argument("--grid", required=True, help="grid file (path, or a name in tuning/grids/)")
    parser.add_argument("--quick", action="store_true", help="the grid's laptop form (synthetic data, tiny budget)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every trial")
    parser.add_argument("--max-concurrent", type=int, default=4, help="trials at once, at most [4]")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's and MLflow's own messages")
    args = parser.parse_args(argv)
    from pipeline.pretrain import configure_logging

    configure_logging(args.verbose)
    try:
        grid = load_grid(args.grid, quick=args.quick, extra=parse_assignments(args.set))
    except (GridError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"grid {grid.path}: {len(grid.trials)} trials over {', '.join(grid.axes) or 'no axis'} (all validated)")

    from pipeline.cluster import ResourceError
    from pipeline.tracking import TrackingError
    from tuning.report import write_report

    try:
        plan, outcome = run_sweep(grid, args.max_concurrent)
    except (ConfigError, GridError, ResourceError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, error in outcome.failed:
        print(f"trial {name} failed: {error}")
    for name in outcome.stopped:
        print(f"trial {name} stopped early by ASHA")
    # Ended before the report is written: a report that fails must not leave the parent RUNNING.
    end_parent(plan, outcome.status, outcome.reason)
    report = write_report(plan.tracking_uri, plan.parent_run_id)
    print(report.markdown)
    print(f"report files in {report.folder} (also artifacts of MLflow run {plan.parent_run_id})")
    if outcome.unfinished:
        print(
            f"interrupted: {len(outcome.unfinished)} of {len(grid.trials)} trials unfinished "
            f"({', '.join(outcome.unfinished)}); run the same command again to resume them"
        )
    elif outcome.failed:
        print(f"{len(outcome.failed)} of {len(grid.trials)} trials failed; run the same command again to retry them")
    return outcome.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
