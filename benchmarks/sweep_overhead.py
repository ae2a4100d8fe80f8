"""Print the fixed cost of a sweep trial against its training time, for a quick grid run on this machine.

Runs ``python -m tuning.sweep --grid GRID --quick`` into a temporary store, then reads every child
run back from MLflow: the trial's wall time (its MLflow run's start to end: data opening, Ray Train
start, training, kNN passes, checkpoints, evaluation) against the time spent in its epochs
(``perf/epoch_time_s`` summed), and the sweep's own wall time. What the project does to keep the
fixed part small: the trial's own driver reserves no CPU (1 MiB of Ray's logical memory) so that its
workers get the real ones;
the quick forms turn the raw-pixel baseline off and use in-process data loading
(``data.num_workers: 0``); the config is validated once per trial before Ray starts.
Example: ``python benchmarks/sweep_overhead.py --grid ascl_tau --max-concurrent 2``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

from tuning import sweep
from tuning.report import find_parent


def main() -> None:
    """Run the quick grid and print one line per trial, then the means."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--grid", default="ascl_tau")
    parser.add_argument("--max-concurrent", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{Path(folder) / 'mlflow.db'}"
        extra = ["--set", f"ray.storage_path={Path(folder) / 'runs'}", "--set", f"tracking.uri={uri}"]
        started = time.perf_counter()
        code = sweep.main(["--grid", args.grid, "--quick", "--max-concurrent", str(args.max_concurrent), *extra])
        sweep_wall = time.perf_counter() - started
        client = MlflowClient(uri)
        parent = find_parent(uri, f"{args.grid}-quick")
        children = client.search_runs(
            [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        walls, trains = [], []
        print(f"\n{args.grid} quick, {len(children)} trials, up to {args.max_concurrent} at once (exit code {code})")
        for child in sorted(children, key=lambda run: run.data.tags["trial"]):
            if child.info.end_time is None:
                continue
            wall = (child.info.end_time - child.info.start_time) / 1000
            epochs = client.get_metric_history(child.info.run_id, "perf/epoch_time_s")
            train = sum(metric.value for metric in epochs)
            walls.append(wall)
            trains.append(train)
            print(
                f"  {child.data.tags['trial']}: {wall:5.1f} s in its MLflow run, {train:5.1f} s in {len(epochs)} "
                f"epochs, fixed {wall - train:5.1f} s"
            )
        if walls:
            print(
                f"mean per trial: {statistics.mean(walls):.1f} s, of which training {statistics.mean(trains):.1f} s "
                f"and fixed {statistics.mean(walls) - statistics.mean(trains):.1f} s; sweep wall {sweep_wall:.0f} s "
                f"({sweep_wall / len(walls):.1f} s per trial with Tune's own start and the report)"
            )


if __name__ == "__main__":
    main()
