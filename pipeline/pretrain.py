"""Command line and function: resolved config -> Ray Train run -> result with metrics, checkpoint, MLflow run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray
import torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline import tracking
from pipeline.checkpoints import (
    checkpoint_epoch,
    checkpoint_metrics,
    latest_checkpoint,
    read_run_id,
    resolve_run,
    write_run_id,
)
from pipeline.config import (
    ConfigError,
    ExperimentConfig,
    RayConfig,
    add_config_arguments,
    config_from_args,
    flatten,
    to_yaml,
)
from pipeline.data.build import Source, build_source
from pipeline.data.errors import DataError
from pipeline.data.views import build_view
from pipeline.evaluation.knn import pixel_knn_top1
from pipeline.methods import get_method
from pipeline.train import train_loop_per_worker

log = logging.getLogger(__name__)

WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


class ResourceError(RuntimeError):
    """The requested workers cannot be placed on the cluster."""


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

    def summary(self) -> dict[str, Any]:
        """Return the result as a JSON-ready mapping."""
        return asdict(self)


def storage_root(config: RayConfig) -> str:
    """Return ``ray.storage_path`` as an absolute path (URIs such as s3:// are kept as they are)."""
    if "://" in config.storage_path:
        return config.storage_path
    return str(Path(config.storage_path).expanduser().resolve())


def ensure_ray(config: RayConfig) -> None:
    """Connect to Ray: the running session, the configured or ambient cluster, else a new local one."""
    if ray.is_initialized():
        return
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": WORKER_ENV})
        return
    ray.init(
        num_cpus=config.num_cpus,
        object_store_memory=config.object_store_memory,
        runtime_env={"env_vars": WORKER_ENV},
    )


def check_resources(config: RayConfig, local: bool) -> None:
    """Raise ResourceError when the workers ask for more than the cluster has (a local cluster never grows)."""
    workers = max(config.num_workers, 1)
    wanted = {"CPU": workers * config.cpus_per_worker, "GPU": workers * config.gpus_per_worker}
    available = ray.cluster_resources()
    short = {k: (v, available.get(k, 0.0)) for k, v in wanted.items() if v > available.get(k, 0.0)}
    if not short:
        return
    detail = ", ".join(f"{need:g} {kind} wanted, {have:g} in the cluster" for kind, (need, have) in short.items())
    message = (
        f"ray.num_workers={config.num_workers} x (cpus_per_worker={config.cpus_per_worker:g}, "
        f"gpus_per_worker={config.gpus_per_worker:g}) cannot be placed: {detail}"
    )
    if local:
        raise ResourceError(message)
    log.warning("%s; waiting for the cluster to grow (autoscaler)", message)


def open_data(config: ExperimentConfig) -> dict[str, Source]:
    """Return both splits, opened in the driver so that a bad path or file fails here, before any run starts."""
    sources = {split: build_source(config.data, split) for split in ("train", "test")}
    for split, source in sources.items():
        print(f"data {split}: {source.describe()}")
    return sources


def pixel_baseline(config: ExperimentConfig, sources: dict[str, Source]) -> float:
    """Return the raw-pixel weighted-kNN top-1 (percent) of the opened splits under the eval transform."""
    view = build_view("eval", config.data)
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


def pretrain(config: ExperimentConfig) -> PretrainResult:
    """Run (or resume) one pretraining run end to end and return its result."""
    started = time.time()
    method_class = get_method(config.method.name)
    world_size = max(config.ray.num_workers, 1)
    try:
        method_class.validate(config, world_size)
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    if config.train.batch_size % world_size:
        raise ConfigError(
            f"train.batch_size = {config.train.batch_size} is not divisible by ray.num_workers = {world_size}"
        )

    sources = open_data(config)
    storage = storage_root(config.ray)
    run_name, resume_from = resolve_run(config, Path(storage))
    run_dir = Path(storage) / run_name
    epochs_done = checkpoint_epoch(resume_from) if resume_from is not None else 0
    if resume_from is not None:
        print(f"resuming run '{run_name}' from {resume_from} ({epochs_done}/{config.train.epochs} epochs done)")
    else:
        print(f"starting run '{run_name}' in {run_dir}")

    run = tracking.open_run(config.tracking, run_name, flatten(config), existing_run_id=read_run_id(run_dir))
    write_run_id(run_dir, run.run_id)
    tracking.log_text(run, to_yaml(config), "config.yaml")
    tracking.set_tags(run, {"run_name": run_name, "run_dir": str(run_dir), "method": config.method.name})
    print(f"MLflow run {run.run_id} in {run.tracking_uri}")

    try:
        baseline = tracking.latest_metric(run, "baseline/pixel_knn_top1")
        if config.eval.pixel_baseline and baseline is None:
            baseline = pixel_baseline(config, sources)
            tracking.log_metrics(run, {"baseline/pixel_knn_top1": baseline}, step=0)
        if baseline is not None:
            print(f"raw-pixel kNN baseline: {baseline:.2f}%")

        ensure_ray(config.ray)
        check_resources(config.ray, local=not (config.ray.address or os.environ.get("RAY_ADDRESS")))
        if epochs_done < config.train.epochs:
            _fit(config, method_class, run_name, storage, run_dir, run)
        checkpoint_dir = latest_checkpoint(run_dir)
        metrics = {} if checkpoint_dir is None else checkpoint_metrics(checkpoint_dir)
    except BaseException:
        tracking.finish_run(run, "KILLED" if sys.exc_info()[0] is KeyboardInterrupt else "FAILED")
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
    return result


def _fit(
    config: ExperimentConfig, method_class: Any, run_name: str, storage: str, run_dir: Path, run: tracking.RunHandle
) -> None:
    """Launch the TorchTrainer for the run and raise if training failed."""
    use_gpu = config.ray.gpus_per_worker > 0
    resources = {"CPU": config.ray.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = config.ray.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "run_dir": str(run_dir),
            "mlflow": asdict(run),
            "handles": method_class.shared_handles(config, run_name),
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
            worker_runtime_env={"env_vars": WORKER_ENV},
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def print_result(result: PretrainResult) -> None:
    """Print the end-of-run summary a person reads."""
    knn = result.metrics.get("knn/top1")
    print("\n=== pretraining finished ===")
    print(f"run            {result.run_name}  ({result.wall_time_s:.0f}s)")
    if knn is not None:
        print(f"kNN top-1      {knn:.2f}%")
    if result.pixel_knn_top1 is not None:
        print(f"raw-pixel kNN  {result.pixel_knn_top1:.2f}%  (baseline on the same data)")
    print(f"checkpoint     {result.checkpoint_path}")
    print(f"MLflow run     {result.mlflow_run_id}")
    print(f"MLflow store   {result.tracking_uri}")
    print(f"browse with    {tracking.run_url(tracking.RunHandle(result.tracking_uri, '', result.mlflow_run_id))}")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, pretrain, print the result; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m pipeline.pretrain", description=__doc__)
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    try:
        result = pretrain(config)
    except (ConfigError, DataError, ResourceError, tracking.TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_result(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
