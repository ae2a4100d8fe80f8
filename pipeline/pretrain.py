"""Command line: ``python -m pipeline.pretrain --config FILE [--set key=value ...] [--local]``.

The config is validated before anything heavy is imported, so a typo costs a fraction of a
second; then the driver (``pipeline.runtime.launch``) runs the pretraining and this prints the result.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING

from pipeline.config import ConfigError, add_config_arguments, config_from_args

if TYPE_CHECKING:
    from pipeline.runtime.launch import PretrainResult


def print_result(result: PretrainResult) -> None:
    """Print the end-of-run summary a person reads."""
    from pipeline.record.run import RunHandle, run_url

    knn = result.metrics.get("knn/top1")
    print("\n=== pretraining finished ===")
    print(f"run            {result.run_name}  ({result.wall_time_s:.0f}s)")
    online = result.metrics.get("online/top1")
    if knn is not None:
        print(f"kNN top-1      {knn:.2f}%")
    if online is not None:
        print(f"online probe   {online:.2f}%  (linear head trained beside pretraining; not the offline protocol)")
    if result.pixel_knn_top1 is not None:
        print(f"raw-pixel kNN  {result.pixel_knn_top1:.2f}%  (baseline on the same data)")
    print(f"checkpoint     {result.checkpoint_path}")
    print(f"MLflow run     {result.mlflow_run_id}")
    print(f"MLflow store   {result.tracking_uri}")
    print(f"browse with    {run_url(RunHandle(result.tracking_uri, '', result.mlflow_run_id))}")


# The shell's convention for a command ended by SIGINT.
INTERRUPTED_EXIT = 130

# Ray's notice that its token authentication is on (it stays on); shown with --verbose.
RAY_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


def configure_logging(verbose: bool) -> None:
    """Show the project's lines; Ray's and MLflow's informational messages only when ``verbose``."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        # MLflow configures its logger from this variable when it is first imported (after this point).
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger(RAY_AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, pretrain, print the result; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain", description=__doc__)
    add_config_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="also show Ray's and MLflow's own messages")
    parser.add_argument(
        "--local",
        action="store_true",
        help="train in this process instead of on Ray Train's workers (one worker; for a debugger or profiler); "
        "same checkpoints, MLflow record and resume",
    )
    args = parser.parse_args(argv)
    config = config_from_args(args)
    configure_logging(args.verbose)

    # Imported only now: torch, Ray and MLflow take seconds to load, and a config error must not wait for them.
    from pipeline.data.errors import DataError
    from pipeline.record.store import TrackingError
    from pipeline.runtime.cluster import INTERRUPTED, ResourceError
    from pipeline.runtime.launch import RunActorDied, RunInterrupted, pretrain

    def interrupt(signum: int, frame: FrameType | None) -> None:
        INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    resume = shlex.join(["python", "-m", "pipeline.pretrain", *(sys.argv[1:] if argv is None else argv)])
    try:
        result = pretrain(config, verbose=args.verbose, local=args.local)
    except (ConfigError, DataError, ResourceError, TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunActorDied as died:
        print(f"error: {died}: {resume}", file=sys.stderr)
        return 1
    except RunInterrupted as stopped:
        print(f"\ninterrupted: {stopped} (MLflow run {stopped.mlflow_run_id} marked KILLED)", file=sys.stderr)
        print(f"resume with: {resume}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except KeyboardInterrupt:
        print("\ninterrupted before the run started: nothing was recorded", file=sys.stderr)
        return INTERRUPTED_EXIT
    print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
