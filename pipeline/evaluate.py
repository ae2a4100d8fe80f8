"""Command line: ``python -m pipeline.evaluate --run RUN [--set eval.linear.KEY=VALUE ...] [--force]``.

RUN is a run folder (``runs/<run name>``) or an MLflow run id (its folder is read from the run's
``run_dir`` tag). The run must have finished pretraining. Prints one table row per classifier
(each evaluation network, and their ensemble when there are several) and logs the metrics, a
per-class CSV and a confusion-matrix PNG into the pretraining run's MLflow record.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipeline.config import ConfigError

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def run_folder(run: str, tracking_uri: str | None) -> Path:
    """Return the run folder named by ``run``: a path, or an MLflow run id whose ``run_dir`` tag names it."""
    from pipeline.probe import EvaluationError

    if Path(run).is_dir() or not RUN_ID.match(run):
        return Path(run)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipeline.config import TrackingConfig
    from pipeline.tracking import resolve_tracking_uri

    uri = tracking_uri or resolve_tracking_uri(TrackingConfig())
    try:
        tags = MlflowClient(uri).get_run(run).data.tags
    except MlflowException:
        raise EvaluationError(f"no MLflow run {run} in {uri} (pass --tracking-uri, or the run folder)") from None
    if "run_dir" not in tags:
        raise EvaluationError(f"MLflow run {run} has no run_dir tag: it was not recorded by pipeline.pretrain")
    return Path(tags["run_dir"])


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, evaluate the run, print its table; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__)
    parser.add_argument("--run", required=True, help="run folder, or MLflow run id")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.linear.KEY=VALUE")
    parser.add_argument("--force", action="store_true", help="evaluate again even if this result exists")
    parser.add_argument("--tracking-uri", help="MLflow store of an MLflow run id (default: as pretraining)")
    args = parser.parse_args(argv)

    from pipeline.data.errors import DataError
    from pipeline.probe import EvaluationError, evaluate_and_record

    try:
        folder = run_folder(args.run, args.tracking_uri)
        result = evaluate_and_record(folder, args.overrides, args.force)
    except (ConfigError, DataError, EvaluationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = "reused from an earlier evaluation" if result.reused else "logged to the run's MLflow record"
    print(f"linear evaluation of {result.checkpoint} ({result.protocol} protocol; {state})")
    print(result.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
