"""Command line: ``python -m tuning.sweep --grid FILE [--quick] [--set key=value ...] [--max-concurrent N]
[--trials SELECTION]``.

A Ray Tune grid in which each trial is one whole pretraining run (``pipeline.runtime.launch.pretrain``: its own
TorchTrainer and workers, then the grid's evaluation). One MLflow parent run per sweep, one child run
per trial tagged with its axis values, seed and name. Every trial is validated before anything runs.
Run the same command again after an interrupt or a failure: the MLflow store is the sweep's record, so trials it
holds done are kept and the others resume from their checkpoints and their MLflow runs; nothing is recorded twice.
``--trials 3,7-12`` runs only part of the grid. A store rebuilt on another machine from the sweep's archive
(``python -m tuning.archive``) keeps the archived trials in the same way. A failed trial is
reported with its error and the other trials go on. The report (``tuning.report``) is written at the
end, and can be run any time while the sweep is in progress. Exit codes: 0 every selected trial finished,
1 some failed, 130 interrupted (Ctrl+C) with trials unfinished, 2 bad input; the parent run ends
FINISHED, FAILED or KILLED accordingly and is RUNNING again while a re-run resumes it. With the grid's
``search: asha`` ASHA judges each epoch's metric as the trial reports it (every trial hands Tune each
epoch's figures and waits for its word) and stops the weaker ones at its rungs; a stopped trial's run
ends KILLED at that epoch with the tag ``stopped_early``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, ExperimentConfig, flatten, with_overrides
from pipeline.record import sweep as sweep_record
from pipeline.record.names import SWEEP_TAG, TRIAL_TAG
from pipeline.record.store import TrackingError, reachable_store
from tuning.grid import Grid, GridError, load_grid, parse_assignments
from tuning.report import write_report
from tuning.trial import EPOCH_KEY, FINISHED_KEY, PretrainTrial

# The trial's own driver needs no CPU: its TorchTrainer's workers reserve the real ones. A Tune bundle cannot be
# empty, so it holds 1 MiB of Ray's logical memory; a fraction of a CPU instead left a trial whose workers ask for
# every CPU of the machine (cpus_per_worker 2 on 2 cores) waiting forever for the fraction its own driver held.
TRIAL_DRIVER_RESOURCES = {"cpu": 0, "memory": 2**20}


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
    """How one run of the sweep command ended: failed trials ``(name, error)``, unfinished, stopped and pending ones.

    Pending trials are those outside the command's ``--trials`` selection that are not done yet.
    """

    failed: list[tuple[str, str]]
    unfinished: list[str]
    stopped: list[str]
    pending: list[str]

    @property
    def status(self) -> str:
        """Return the parent run's MLflow status: KILLED while trials are left, FAILED if one failed, else FINISHED."""
        if self.unfinished:
            return "KILLED"
        if self.failed:
            return "FAILED"
        return "KILLED" if self.pending else "FINISHED"

    @property
    def reason(self) -> str | None:
        """Return why the sweep did not finish (the parent run's ``error`` tag), None if it did."""
        if self.unfinished:
            return f"interrupted with {len(self.unfinished)} trial(s) unfinished: {', '.join(self.unfinished)}"
        if self.failed:
            return f"{len(self.failed)} trial(s) failed: {', '.join(name for name, _ in self.failed)}"
        if self.pending:
            return f"{len(self.pending)} trial(s) not run yet (outside --trials): {', '.join(self.pending)}"
        return None

    @property
    def exit_code(self) -> int:
        """Return the command's exit code: 130 if interrupted, 1 if a trial failed, else 0."""
        if self.unfinished:
            return 130
        return 1 if self.failed else 0


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
    spec = grid.spec
    params = {
        "grid": spec.name,
        "quick": grid.quick,
        "metric": spec.metric,
        "mode": spec.mode,
        "trials": len(grid.trials),
    }
    return sweep_record.find_or_create_parent(
        uri, experiment, grid.sweep_name, grid_trials_record(grid), params, grid.path
    )


def actor_demand(config: ExperimentConfig) -> dict[str, float]:
    """Return the CPUs and GPUs the method's run-scoped actors reserve for one trial."""
    from pipeline.methods import get_method
    from pipeline.runtime.resources import required_resources

    return required_resources(get_method(config.method.name).resources(config))


def trial_demand(config: ExperimentConfig, actors: dict[str, float]) -> dict[str, float]:
    """Return the CPUs and GPUs one trial holds: its workers and its method's ``actors`` (its own driver holds none)."""
    workers = max(config.ray.num_workers, 1)
    return {
        "CPU": workers * config.ray.cpus_per_worker + actors["CPU"],
        "GPU": workers * config.ray.gpus_per_worker + actors["GPU"],
    }


def check_cluster(configs: dict[str, ExperimentConfig], max_concurrent: int) -> int:
    """Return how many trials run at once; raise ResourceError naming a trial the cluster cannot hold."""
    import ray

    from pipeline.runtime.cluster import ResourceError, check_resources, cluster_address

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
        # A trial that reaches the last epoch goes on to its evaluation and final figures, not a stop.
        stop_last_trials=False,
    )


def parse_selection(text: str, grid: Grid) -> list[str]:
    """Return the names of the grid's trials that ``text`` selects (positions like ``3,7-12``, or trial names)."""
    last_index = len(grid.trials) - 1
    names = {trial.name for trial in grid.trials}
    chosen: set[str] = set()
    for part in (piece.strip() for piece in text.split(",")):
        if part in names:
            chosen.add(part)
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise GridError(f"--trials: {part!r} is neither a position (like 3 or 7-12) nor a trial name") from None
        if not 0 <= first <= last <= last_index:
            raise GridError(f"--trials: {part!r} is outside the grid's positions 0-{last_index}")
        chosen.update(trial.name for trial in grid.trials[first : last + 1])
    return [trial.name for trial in grid.trials if trial.name in chosen]


# Config keys that name the machine or the sweep's own bookkeeping, not what a trial computes: they may differ
# between the run that did a trial and this sweep (another machine's data folder, store, workers).
MACHINE_KEYS = ("ray.", "tracking.", "data.root", "data.num_workers")


def trial_settings(config: ExperimentConfig) -> dict[str, str]:
    """Return the trial's recorded-param form of every setting that decides what it computes."""
    return {key: str(value) for key, value in flatten(config).items() if not key.startswith(MACHINE_KEYS)}


def kept_trials(grid: Grid, uri: str) -> set[str]:
    """Return the trials whose run the store already holds done (complete, or stopped early by ASHA).

    Raise SweepRecordError naming a done trial recorded with other settings than the grid now gives it, so
    that a changed grid or ``--set`` never mixes with results computed under the old one.
    """
    try:
        parent = sweep_record.find_parent(uri, grid.sweep_name)
    except sweep_record.SweepRecordError:
        return set()
    by_name = {trial.name: trial for trial in grid.trials}
    kept = set()
    for run in sweep_record.child_runs(uri, parent):
        trial = by_name.get(run.data.tags.get(TRIAL_TAG, ""))
        if trial is None or not sweep_record.done(run):
            continue
        recorded = run.data.params
        changed = {
            key: (recorded[key], value)
            for key, value in trial_settings(trial.config).items()
            if key in recorded and recorded[key] != value
        }
        if changed:
            detail = ", ".join(f"{key} = {now} (done with {was})" for key, (was, now) in sorted(changed.items()))
            raise sweep_record.SweepRecordError(
                f"trial {trial.name} is done in {uri} with other settings than this sweep gives it: {detail}; "
                f"drop the change, or rename the grid to run a changed one"
            )
        kept.add(trial.name)
    return kept


def run_sweep(grid: Grid, max_concurrent: int, selected: list[str] | None = None) -> tuple[SweepPlan, SweepOutcome]:
    """Run the sweep's ``selected`` trials (all by default) not yet done in its store; return its plan and outcome.

    The MLflow store is the sweep's record: a trial whose run it holds done is kept, every other one runs,
    resuming its own run from its checkpoints where it has any (an interrupted one) or starting afresh (a failed one).
    """
    from ray import tune

    from pipeline.runtime.cluster import ensure_ray, storage_root
    from pipeline.training.checkpoints import check_storage
    from tuning.callbacks import StopRequester, TrialProgress

    reference = grid.trials[0].config
    # Every check that can refuse the sweep runs before its MLflow parent run exists: storage, store, resources.
    storage = storage_root(reference.ray)
    check_storage(storage)
    uri = reachable_store(reference.tracking)
    kept = kept_trials(grid, uri)
    ensure_ray(reference.ray)
    concurrent = check_cluster({trial.name: trial.config for trial in grid.trials}, max_concurrent)
    plan = plan_sweep(grid, uri, Path(storage) / "sweeps" / grid.sweep_name)
    wanted = [trial.name for trial in grid.trials] if selected is None else selected
    to_run = [name for name in wanted if name not in kept]
    if kept:
        print(f"resuming sweep {grid.sweep_name}: {len(kept)} trial(s) already done in {uri} are kept")
    if selected is not None and grid.spec.search == "asha":
        print("note: ASHA compares only the trials of this run of the command, not the kept ones")
    print(
        f"sweep {grid.sweep_name}: {len(to_run)} of {len(grid.trials)} trials to run, up to {concurrent} at once; "
        f"MLflow parent run {plan.parent_run_id} in {plan.tracking_uri}"
    )
    results: list[Any] = []
    if to_run:
        tuner = tune.Tuner(
            tune.with_resources(PretrainTrial, TRIAL_DRIVER_RESOURCES),
            param_space={"config": tune.grid_search([plan.configs[name].model_dump(mode="json") for name in to_run])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, scheduler=asha_scheduler(grid)),
            run_config=tune.RunConfig(
                name=grid.sweep_name,
                storage_path=str(plan.tune_path.parent),
                verbose=0,
                log_to_file=True,
                # A trial's state is its run's own checkpoints (the run resumes from them); Tune keeps none.
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
                callbacks=[TrialProgress(len(to_run), grid.spec.metric), StopRequester()],
            ),
        )
        # On SIGINT Tune stops its trials and fit() returns: a trial that neither finished, failed nor was stopped
        # by the scheduler is unfinished.
        try:
            results = list(tuner.fit())
        except BaseException as exc:
            # The parent run exists by now: however Tune itself ends, it must not stay RUNNING.
            interrupted = isinstance(exc, KeyboardInterrupt)
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            sweep_record.end_parent(
                plan.tracking_uri,
                plan.parent_run_id,
                "KILLED" if interrupted else "FAILED",
                f"{'interrupted' if interrupted else 'Tune failed'}: {detail}",
            )
            raise
    failed, finished, stopped = [], set(kept), []
    for result in results:
        name = result.config["config"]["ray"]["run_name"] if result.config else "?"
        if result.error is not None:
            failed.append((name, str(result.error).strip().splitlines()[-1]))
        elif (result.metrics or {}).get(FINISHED_KEY):
            finished.add(name)
        elif name in plan.configs:
            # Tune stopped listening before the final figures: the run's own record says how it ended.
            status, stopped_early = sweep_record.child_status(plan.configs[name].tracking)
            if stopped_early:
                sweep_record.end_stopped(plan.configs[name].tracking)
                stopped.append(name)
            elif status == "FINISHED":
                finished.add(name)
    done = finished | set(stopped) | {name for name, _ in failed}
    unfinished = [name for name in to_run if name not in done]
    for name in unfinished:
        sweep_record.end_interrupted(plan.configs[name].tracking)
    pending = [trial.name for trial in grid.trials if trial.name not in done and trial.name not in wanted]
    return plan, SweepOutcome(failed, unfinished, stopped, pending)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the sweep and its report; return the exit code (1 if a trial failed)."""
    parser = argparse.ArgumentParser(prog="python -m tuning.sweep", description=__doc__)
    parser.add_argument("--grid", required=True, help="grid file (path, or a name in tuning/grids/)")
    parser.add_argument("--quick", action="store_true", help="the grid's laptop form (synthetic data, tiny budget)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every trial")
    parser.add_argument("--max-concurrent", type=int, default=4, help="trials at once, at most [4]")
    parser.add_argument(
        "--trials", metavar="SELECTION", help="run only these trials: positions like 3,7-12, or trial names"
    )
    parser.add_argument("--verbose", action="store_true", help="also show Ray's and MLflow's own messages")
    args = parser.parse_args(argv)
    from pipeline.pretrain import configure_logging

    configure_logging(args.verbose)
    try:
        grid = load_grid(args.grid, quick=args.quick, extra=parse_assignments(args.set))
        selected = None if args.trials is None else parse_selection(args.trials, grid)
    except (GridError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"grid {grid.path}: {len(grid.trials)} trials over {', '.join(grid.axes) or 'no axis'} (all validated)")

    from pipeline.runtime.cluster import ResourceError

    try:
        plan, outcome = run_sweep(grid, args.max_concurrent, selected)
    except (ConfigError, GridError, ResourceError, TrackingError, sweep_record.SweepRecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, error in outcome.failed:
        print(f"trial {name} failed: {error}")
    for name in outcome.stopped:
        print(f"trial {name} stopped early by ASHA")
    # Ended before the report is written: a report that fails must not leave the parent RUNNING.
    sweep_record.end_parent(plan.tracking_uri, plan.parent_run_id, outcome.status, outcome.reason)
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
    if outcome.pending:
        print(f"{len(outcome.pending)} of {len(grid.trials)} trials not run yet: select them with --trials or drop it")
    return outcome.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
