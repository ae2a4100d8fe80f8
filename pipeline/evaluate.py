"""Linear evaluation of a finished run, as a function and a command line.

``python -m pipeline.evaluate --run RUN [--set eval.linear.KEY=VALUE ...] [--force]``.

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

import torch

from pipeline.config import ConfigError, TrackingConfig
from pipeline.data.build import build_source
from pipeline.evaluation.linear_ray import augmented_logits
from pipeline.evaluation.stage import (
    BASELINES,
    EVAL_DIR,
    EvaluationError,
    EvaluationResult,
    features_logits,
    finished_checkpoint,
    load_run_config,
    probe_settings,
    record_evaluation,
    settings_key,
    summarise,
)
from pipeline.record.names import RUN_DIR_TAG
from pipeline.record.run import RunHandle, run_tags
from pipeline.record.store import TrackingError, existing_store, resolve_tracking_uri
from pipeline.training.checkpoints import checkpoint_folders, incomplete_reason, read_run_id, read_tracking_uri

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def evaluate_run(
    run_dir: Path,
    overrides: list[str] | tuple[str, ...] = (),
    force: bool = False,
    device: torch.device | None = None,
    verbose: bool = False,
) -> EvaluationResult:
    """Return the linear-probe result of a finished run (reused from its folder unless ``force``)."""
    run_dir = Path(run_dir)
    try:
        config = load_run_config(run_dir, overrides)
    except ConfigError as exc:
        raise EvaluationError(str(exc)) from None
    refuse_unusable_checkpoint(run_dir)
    checkpoint = finished_checkpoint(run_dir, config)
    linear = config.eval.linear
    key = settings_key(config, checkpoint)
    result_path = run_dir / EVAL_DIR / f"{linear.protocol}-{key}.json"
    if result_path.is_file() and not force:
        result = EvaluationResult.from_json(result_path.read_text())
        result.reused = True
        return result
    num_classes = build_source(config.data, "train").num_classes
    sampling = probe_settings(linear, config.data.long_tail_ratio is not None).sampling
    if linear.protocol == "augmented":
        logits, labels = augmented_logits(config, checkpoint, run_dir, key, sampling, verbose)
    else:
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        logits, labels = features_logits(config, checkpoint, run_dir, num_classes, device)
    evaluated = [name for name in logits if name not in BASELINES]
    result = summarise(config, run_dir, checkpoint, key, sampling, logits, labels, evaluated)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(result.to_json())
    return result


def refuse_unusable_checkpoint(run_dir: Path) -> None:
    """Return None unless the run's newest checkpoint folder is torn or corrupt; then raise EvaluationError saying so.

    Evaluating the previous epoch instead would silently report another checkpoint than the run's result.
    """
    newest = next(iter(checkpoint_folders(run_dir)), None)
    reason = incomplete_reason(newest) if newest is not None else None
    if reason is not None:
        raise EvaluationError(
            f"checkpoint {newest} is unusable ({reason}): rerun the pretraining command to train that epoch again"
        )


def evaluate_and_record(
    run_dir: Path,
    overrides: list[str] | tuple[str, ...] = (),
    force: bool = False,
    tracking_uri: str | None = None,
    verbose: bool = False,
) -> EvaluationResult:
    """Return the run's evaluation, logged into its MLflow run when it was computed now (not reused)."""
    result = evaluate_run(run_dir, overrides, force, verbose=verbose)
    run_id, uri = read_run_id(Path(run_dir)), tracking_uri or read_tracking_uri(Path(run_dir))
    if not result.reused and run_id is not None and uri is not None:
        record_evaluation(result, RunHandle(uri, "", run_id))
    return result


def run_folder(run: str, tracking_uri: str | None) -> Path:
    """Return the run folder named by ``run``: a path, or an MLflow run id whose ``run_dir`` tag names it."""
    if Path(run).is_dir() or not RUN_ID.match(run):
        return Path(run)
    try:
        uri = existing_store(tracking_uri or resolve_tracking_uri(TrackingConfig()))
    except TrackingError as exc:
        raise EvaluationError(f"{exc} (pass --tracking-uri, or the run folder)") from None
    tags = run_tags(uri, run)
    if tags is None:
        raise EvaluationError(f"no MLflow run {run} in {uri} (pass --tracking-uri, or the run folder)")
    if RUN_DIR_TAG not in tags:
        raise EvaluationError(f"MLflow run {run} has no {RUN_DIR_TAG} tag: it was not recorded by pipeline.pretrain")
    return Path(tags[RUN_DIR_TAG])


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, evaluate the run, print its table; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__)
    parser.add_argument("--run", required=True, help="run folder, or MLflow run id")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="eval.linear.KEY=VALUE")
    parser.add_argument("--force", action="store_true", help="evaluate again even if this result exists")
    parser.add_argument("--tracking-uri", help="MLflow store of an MLflow run id (default: as pretraining)")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's own messages (augmented protocol)")
    args = parser.parse_args(argv)

    from pipeline.data.errors import DataError
    from pipeline.runtime.cluster import ResourceError

    try:
        folder = run_folder(args.run, args.tracking_uri)
        result = evaluate_and_record(folder, args.overrides, args.force, verbose=args.verbose)
    except (ConfigError, DataError, EvaluationError, ResourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = "reused from an earlier evaluation" if result.reused else "logged to the run's MLflow record"
    print(f"linear evaluation of {result.checkpoint} ({result.protocol} protocol; {state})")
    print(result.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
