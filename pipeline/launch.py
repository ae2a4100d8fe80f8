"""The driver: resolved config -> checks -> run-scoped actors -> Ray Train run -> result with metrics and MLflow run."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline import tracking
from pipeline.checkpoints import (
    checkpoint_epoch,
    checkpoint_folders,
    checkpoint_metrics,
    incomplete_reason,
    latest_checkpoint,
    read_run_id,
    resolve_run,
    write_run_config,
    write_run_id,
)
from pipeline.config import ConfigError, ExperimentConfig, RayConfig, flatten, to_yaml
from pipeline.data.build import Source, build_source
from pipeline.data.errors import DataError
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.evaluation.knn import pixel_knn_top1
from pipeline.methods import Method, get_method
from pipeline.probe import evaluate_and_record
from pipeline.progress import ProgressRelay
from pipeline.resources import RunResources, required_resources
from pipeline.train import train_loop_per_worker

log = logging.getLogger(__name__)

PIXEL_BASELINE = "baseline/pixel_knn_top1"
PROJECT_ENV_PREFIX = "PIPELINE_"
QUIET_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def worker_env() -> dict[str, str]:
    """Return the environment every Ray process of a run gets: Ray Train's print patch off, the project's variables.

    The project's variables (``PIPELINE_PLUGINS``, the test hooks) start with ``PIPELINE_``; forwarding them
    explicitly makes them reach workers of a cluster that was started before they were set.
    """
    return {**QUIET_ENV, **{key: value for key, value in os.environ.items() if key.startswith(PROJECT_ENV_PREFIX)}}


# Set by the command line's SIGINT/SIGTERM handler: whatever error the interrupt causes inside Ray, it was an interrupt.
INTERRUPTED = threading.Event()


class ResourceError(RuntimeError):
    """The requested workers cannot be placed on the cluster."""


class RunInterrupted(Exception):
    """The run was stopped by an interrupt; its MLflow run is KILLED and it resumes from its last checkpoint."""

    def __init__(self, run_name: str, run_dir: Path, epochs_done: int, epochs: int, mlflow_run_id: str) -> None:
        super().__init__(f"run '{run_name}' interrupted with {epochs_done}/{epochs} epochs saved in {run_dir}")
        self.run_name, self.run_dir, self.mlflow_run_id = run_name, run_dir, mlflow_run_id
        self.epochs_done, self.epochs = epochs_done, epochs


@dataclass
class PretrainResult:
    """What a finished pretraining run produced."""

    run_name: str
    metrics: dict[str, float]
    checkpoint_path: str | None
    mlflow_run_id: str
    tracking_uri: str
    pixel_knn_top1: float | None
    wall_time_s: float
    evaluation: dict[str, dict[str, float]] | None = None

    def summary(self) -> dict[str, Any]:
        """Return the result as a JSON-ready mapping."""
        return asdict(self)


def storage_root(config: RayConfig) -> str:
    """Return ``ray.storage_path`` as an absolute path (URIs such as s3:// are kept as they are)."""
    if "://" in config.storage_path:
        return config.storage_path
    return str(Path(config.storage_path).expanduser().resolve())


def cluster_address(config: RayConfig) -> str | None:
    """Return the cluster to join: ``ray.address``, else ``RAY_ADDRESS`` (set under ``ray job submit``), else None."""
    return config.address or os.environ.get("RAY_ADDRESS")


def ensure_ray(config: RayConfig, verbose: bool = False) -> None:
    """Connect to Ray: the running session, the configured or ambient cluster, else a new local one.

    Unless ``verbose``, remote processes' output stays in Ray's log files (the run's own progress
    reaches the terminal through the progress relay) and Ray's driver-side messages below warnings are dropped.
    """
    if ray.is_initialized():
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    options: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env()},
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.WARNING,
    }
    on_main_thread = threading.current_thread() is threading.main_thread()
    # ray.init replaces the SIGTERM handler with one that exits at once; the command's own handler is kept.
    sigterm_handler = signal.getsignal(signal.SIGTERM) if on_main_thread else None
    address = cluster_address(config)
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=config.num_cpus, object_store_memory=config.object_store_memory, **options)
    if on_main_thread and callable(sigterm_handler):
        signal.signal(signal.SIGTERM, sigterm_handler)


def check_resources(config: RayConfig, local: bool, extra: dict[str, float] | None = None) -> None:
    """Raise ResourceError when workers plus run-scoped actors ask for more than the cluster has.

    A local cluster never grows, so a shortfall there is an error; on a real cluster the autoscaler may add nodes.
    """
    workers = max(config.num_workers, 1)
    extra = extra or {}
    wanted = {
        "CPU": workers * config.cpus_per_worker + extra.get("CPU", 0.0),
        "GPU": workers * config.gpus_per_worker + extra.get("GPU", 0.0),
    }
    available = ray.cluster_resources()
    short = {k: (v, available.get(k, 0.0)) for k, v in wanted.items() if v > available.get(k, 0.0)}
    if not short:
        return
    detail = ", ".join(f"{need:g} {kind} wanted, {have:g} in the cluster" for kind, (need, have) in short.items())
    actors = f" plus the method's actors ({extra.get('CPU', 0):g} CPU, {extra.get('GPU', 0):g} GPU)" if extra else ""
    message = (
        f"ray.num_workers={config.num_workers} x (cpus_per_worker={config.cpus_per_worker:g}, "
        f"gpus_per_worker={config.gpus_per_worker:g}){actors} cannot be placed: {detail}"
    )
    if local:
        raise ResourceError(message)
    log.warning("%s; waiting for the cluster to grow (autoscaler)", message)


def validate(config: ExperimentConfig) -> type[Method]:
    """Return the method class after every check that needs no data and no Ray; raise ConfigError naming the key."""
    method_class = get_method(config.method.name)
    world_size = max(config.ray.num_workers, 1)
    if config.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size = {config.train.batch_size} is not divisible by ray.num_workers = {world_size}"
        )
    try:
        method_class.validate(config, world_size)
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    return method_class


def open_data(config: ExperimentConfig) -> dict[str, Source]:
    """Return both splits, opened in the driver so that a bad path, file or size fails here, before any run starts."""
    sources = {split: build_source(config.data, split) for split in ("train", "test")}
    for split, source in sources.items():
        print(f"data {split}: {source.describe()}")
    world_size = max(config.ray.num_workers, 1)
    per_worker = -(-len(sources["train"]) // world_size)
    local_batch = config.train.batch_size // world_size
    if per_worker < local_batch:
        raise DataError(
            f"train.batch_size = {config.train.batch_size} needs {local_batch} images per worker, but the training "
            f"set has {len(sources['train'])} images for {world_size} worker(s): lower train.batch_size"
        )
    return sources


def pixel_baseline(config: ExperimentConfig, sources: dict[str, Source]) -> float:
    """Return the raw-pixel weighted-kNN top-1 (percent) of the opened splits under the eval transform."""
    view = build_view(EVAL_VIEW, config.data)
    loaded = []
    for split in ("train", "test"):
        source = sources[split]
        source.transform = view
        loader = torch.utils.data.DataLoader(source, batch_size=512, num_workers=config.data.num_workers)
        images, labels = zip(*[(batch[0], batch[1]) for batch in loader], strict=True)
        loaded.append((torch.cat(images), torch.cat(labels), source.num_classes))
    (train_images, train_labels, num_classes), (test_images, test_labels, _) = loaded
    return pixel_knn_top1(
        train_images,
        train_labels,
        test_images,
        test_labels,
        num_classes,
        config.eval.knn_k,
        config.eval.knn_temperature,
    )


def announce_torn_checkpoints(run_dir: Path, resume_from: Path | None) -> None:
    """Print a line for every checkpoint folder newer than the one the run resumes from (torn by an interrupt)."""
    for folder in checkpoint_folders(run_dir):
        if folder == resume_from:
            break
        reason = incomplete_reason(folder)
        target = resume_from.name if resume_from is not None else "the start"
        print(f"checkpoint {folder.name} is incomplete ({reason}): resuming from {target} instead")


def training_failure(error: BaseException) -> BaseException:
    """Return the error to raise for a failed fit: a worker's DataError as one line, else ``error`` itself."""
    failures = getattr(error, "worker_failures", None) or {}
    for failure in failures.values():
        if isinstance(failure, DataError):
            # The worker's message carries the DataLoader's traceback; its last line is the DataError's own.
            lines = [line for line in str(failure).splitlines() if line.strip()]
            message = lines[-1].split("DataError: ", 1)[-1] if lines else str(failure)
            return DataError(f"{message}; the run resumes from its last checkpoint when run again")
    return error


def pretrain(config: ExperimentConfig, verbose: bool = False) -> PretrainResult:
    """Run (or resume) one pretraining run end to end and return its result.

    Every check that can run before work does (config, data and batch size, tracking store,
    resources): a failure there raises before an MLflow run is created or touched. An interrupt
    (KeyboardInterrupt, or ``INTERRUPTED`` set by a signal handler) marks the run KILLED and raises
    RunInterrupted; any other error marks it FAILED.
    """
    started = time.time()
    method_class = validate(config)
    sources = open_data(config)
    tracking_uri = tracking.reachable_store(config.tracking)
    storage = storage_root(config.ray)
    run_name, resume_from = resolve_run(config, Path(storage))
    run_dir = Path(storage) / run_name
    epochs_done = checkpoint_epoch(resume_from) if resume_from is not None else 0
    needs_training = epochs_done < config.train.epochs
    actor_specs = method_class.resources(config)
    if needs_training:
        # Resources are checked before the MLflow run is touched: a request that cannot run records nothing.
        ensure_ray(config.ray, verbose)
        local = cluster_address(config.ray) is None
        check_resources(config.ray, local, required_resources(actor_specs) if actor_specs else None)
    announce_torn_checkpoints(run_dir, resume_from)
    if resume_from is None:
        print(f"starting run '{run_name}' in {run_dir}")
    elif needs_training:
        print(f"resuming run '{run_name}' from {resume_from} ({epochs_done}/{config.train.epochs} epochs done)")
    else:
        print(f"run '{run_name}' already finished ({epochs_done}/{config.train.epochs} epochs): reporting its result")

    existing_run_id = read_run_id(run_dir)
    baseline = tracking.recorded_metric(tracking_uri, existing_run_id, PIXEL_BASELINE)
    if config.eval.pixel_baseline and baseline is None:
        # Decodes every image of both splits: an unreadable one stops the command here, before any run is touched.
        baseline = pixel_baseline(config, sources)

    run, changed = tracking.open_run(tracking_uri, config.tracking, run_name, flatten(config), existing_run_id)
    try:
        write_run_id(run_dir, run.run_id, run.tracking_uri)
        write_run_config(run_dir, config)
        if changed:
            listed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in sorted(changed.items()))
            print(f"this attempt changes settings that do not alter training: {listed} (tagged on the MLflow run)")
        tracking.log_text(run, to_yaml(config), "config.yaml")
        tracking.set_tags(run, {"run_name": run_name, "run_dir": str(run_dir), "method": config.method.name})
        print(f"MLflow run {run.run_id} in {run.tracking_uri}")
        if baseline is not None and tracking.latest_metric(run, PIXEL_BASELINE) is None:
            tracking.log_metrics(run, {PIXEL_BASELINE: baseline}, step=0)
        if baseline is not None:
            print(f"raw-pixel kNN baseline: {baseline:.2f}%")
        if needs_training:
            _fit(config, run_name, storage, run_dir, run, actor_specs, resume_from)
        checkpoint_dir = latest_checkpoint(run_dir)
        metrics = {} if checkpoint_dir is None else checkpoint_metrics(checkpoint_dir)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or INTERRUPTED.is_set():
            tracking.finish_run(run, "KILLED")
            saved = latest_checkpoint(run_dir)
            raise RunInterrupted(
                run_name, run_dir, checkpoint_epoch(saved) if saved else 0, config.train.epochs, run.run_id
            ) from None
        tracking.finish_run(run, "FAILED")
        raise

    final = {f"final/{k}": v for k, v in metrics.items() if k.startswith(("knn/", "train/loss"))}
    if tracking.latest_metric(run, "final/train/loss") is None:
        tracking.log_metrics(run, final, step=config.train.epochs)
    result = PretrainResult(
        run_name=run_name,
        metrics=metrics,
        checkpoint_path=str(checkpoint_dir) if checkpoint_dir else None,
        mlflow_run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        pixel_knn_top1=baseline,
        wall_time_s=time.time() - started,
    )
    tracking.set_tags(run, {"checkpoint": result.checkpoint_path or ""})
    tracking.log_text(run, json.dumps(result.summary(), indent=2), "summary.json")
    tracking.finish_run(run, "FINISHED")
    if config.eval.linear.enabled:
        evaluation = evaluate_and_record(run_dir, tracking_uri=run.tracking_uri)
        print(f"linear evaluation ({evaluation.protocol}{', reused' if evaluation.reused else ''}):")
        print(evaluation.table())
        result.evaluation = {name: network.metrics() for name, network in evaluation.networks.items()}
    return result


def fit_in_thread(trainer: TorchTrainer) -> BaseException | None:
    """Return the error of ``trainer.fit()`` (None on success), run in a thread the main thread waits on.

    On the main thread Ray Train replaces the process's SIGINT handler with its own, which aborts the
    run and exits; in a thread it does not, so the command's handler sees Ctrl-C, marks the MLflow run
    KILLED and prints how to resume (Ray's processes are stopped when the driver exits).
    """
    outcome: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which decides
            outcome.append(exc)

    thread = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    return outcome[0] if outcome else None


def _fit(
    config: ExperimentConfig,
    run_name: str,
    storage: str,
    run_dir: Path,
    run: tracking.RunHandle,
    actor_specs: dict[str, Any],
    resume_from: Path | None,
) -> None:
    """Create the run's actors and progress relay, launch the TorchTrainer, tear both down; raise if training failed."""
    use_gpu = config.ray.gpus_per_worker > 0
    resources = {"CPU": config.ray.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = config.ray.gpus_per_worker
    relay = ProgressRelay()
    try:
        with RunResources(actor_specs, run_name) as handles:
            trainer = TorchTrainer(
                train_loop_per_worker,
                train_loop_config={
                    "config": config.model_dump(mode="json"),
                    "run_dir": str(run_dir),
                    "mlflow": asdict(run),
                    "resources": handles,
                    "progress": relay.queue,
                    "resume_from": str(resume_from) if resume_from is not None else None,
                },
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                scaling_config=ScalingConfig(
                    num_workers=config.ray.num_workers,
                    use_gpu=use_gpu,
                    resources_per_worker=resources,
                    placement_strategy=config.ray.placement_strategy,
                ),
                run_config=RunConfig(
                    name=run_name,
                    storage_path=storage,
                    failure_config=FailureConfig(max_failures=config.ray.max_failures),
                    checkpoint_config=CheckpointConfig(num_to_keep=2),
                    worker_runtime_env={"env_vars": worker_env()},
                ),
            )
            error = fit_in_thread(trainer)
    finally:
        relay.close()
    if isinstance(error, TrainingFailedError):
        raise training_failure(error) from None
    if error is not None:
        raise error
