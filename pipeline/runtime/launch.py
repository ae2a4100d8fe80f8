"""The driver, in named stages: check -> record -> fit (run-scoped actors, Ray Train) -> result -> evaluate.

The fit stage runs the training loop on Ray Train's workers, or (``local``) in this process with a
``LocalSession``: same loop, checkpoints, MLflow record and resume, no Ray unless the method has actors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pipeline.config import ConfigError, ExperimentConfig, flatten, to_yaml
from pipeline.data.build import Source, build_source
from pipeline.data.errors import DataError
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view
from pipeline.evaluate import evaluate_and_record
from pipeline.evaluation.knn import pixel_knn_top1
from pipeline.evaluation.pictures import embedding_map_png
from pipeline.evaluation.stage import backbone_test_features
from pipeline.export import log_final_model
from pipeline.methods import Method, get_method
from pipeline.record.names import (
    CHECKPOINT_TAG,
    CONFIG_ARTIFACT,
    ERROR_TAG,
    METHOD_TAG,
    MODEL_ERROR_TAG,
    PICTURE_ERROR_TAG,
    PICTURES_DIR,
    RUN_DIR_TAG,
    RUN_NAME_TAG,
    STOPPED_TAG,
    SUMMARY_ARTIFACT,
)
from pipeline.record.run import (
    RunHandle,
    finish_run,
    latest_metric,
    log_artifact,
    log_metrics,
    log_text,
    open_run,
    recorded_metric,
    set_tags,
)
from pipeline.record.store import reachable_store
from pipeline.runtime.cluster import (
    INTERRUPTED,
    check_resources,
    cluster_address,
    ensure_ray,
    fit,
    make_trainer,
    storage_root,
)
from pipeline.runtime.progress import EpochHook, ProgressRelay
from pipeline.runtime.resources import RunResources, actor_name, required_resources
from pipeline.training.checkpoints import (
    check_storage,
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
from pipeline.training.loop import LoopInputs, run_loop, train_loop_per_worker
from pipeline.training.sessions import LocalSession

log = logging.getLogger(__name__)

PIXEL_BASELINE = "baseline/pixel_knn_top1"


class RunInterrupted(Exception):
    """The run was stopped by an interrupt; its MLflow run is KILLED and it resumes from its last checkpoint."""

    def __init__(self, run_name: str, run_dir: Path, epochs_done: int, epochs: int, mlflow_run_id: str) -> None:
        super().__init__(f"run '{run_name}' interrupted with {epochs_done}/{epochs} epochs saved in {run_dir}")
        self.run_name, self.run_dir, self.mlflow_run_id = run_name, run_dir, mlflow_run_id
        self.epochs_done, self.epochs = epochs_done, epochs


class RunStopped(RunInterrupted):
    """The run was asked to stop early and ended at an epoch boundary; its MLflow run is KILLED, tagged why."""

    def __init__(self, run_name: str, run_dir: Path, epochs_done: int, epochs: int, mlflow_run_id: str) -> None:
        super().__init__(run_name, run_dir, epochs_done, epochs, mlflow_run_id)
        self.args = (f"run '{run_name}' stopped early at request after {epochs_done}/{epochs} epochs ({run_dir})",)


class EndedEarly(Exception):
    """Raised by the fit stage when the driver's epoch hook ended training before its last epoch."""

    def __init__(self, epochs_done: int, stop_requested: bool) -> None:
        super().__init__(f"training ended after epoch {epochs_done}")
        self.epochs_done, self.stop_requested = epochs_done, stop_requested


class RunActorDied(RuntimeError):
    """A run-scoped actor died in training; the MLflow run is FAILED and resumes from its last checkpoint."""

    def __init__(self, key: str, ray_name: str, epoch: int, epochs: int, saved: Path | None) -> None:
        where = f"{saved.name} in {saved.parent}" if saved is not None else "the start (no checkpoint yet)"
        super().__init__(
            f"the run's {key} actor (Ray actor '{ray_name}') died during epoch {epoch}/{epochs}; "
            f"running the same command again resumes from {where}"
        )


# How long a live actor may take to answer the liveness ping after a failed fit (a busy one answers between jobs).
ACTOR_PING_S = 10.0


def dead_actors(handles: dict[str, Any]) -> list[str]:
    """Return the keys of the run-scoped actors that are dead (a ping raises RayActorError); busy ones count alive."""
    import ray

    dead = []
    for key, handle in handles.items():
        try:
            ray.get(handle.__ray_ready__.remote(), timeout=ACTOR_PING_S)
        except ray.exceptions.RayActorError:
            dead.append(key)
        except ray.exceptions.GetTimeoutError:
            continue
    return dead


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
    """Print a line for every checkpoint folder newer than the one the run resumes from (torn or corrupt)."""
    for folder in checkpoint_folders(run_dir):
        if folder == resume_from:
            break
        reason = incomplete_reason(folder)
        target = resume_from.name if resume_from is not None else "the start"
        print(f"checkpoint {folder.name} is unusable ({reason}): resuming from {target} instead")


@dataclass(frozen=True)
class RunPlan:
    """What the checks settled before anything is recorded: method, data, storage, store, run and resume point."""

    config: ExperimentConfig
    method_class: type[Method]
    sources: dict[str, Source]
    storage: str
    tracking_uri: str
    run_name: str
    run_dir: Path
    resume_from: Path | None
    actor_specs: dict[str, Any]
    local: bool = False  # the loop runs in this process (``--local``), not on Ray Train's workers

    @property
    def epochs_done(self) -> int:
        """Return the epochs the checkpoint to resume from holds (0 for a fresh run)."""
        return checkpoint_epoch(self.resume_from) if self.resume_from is not None else 0

    @property
    def needs_training(self) -> bool:
        """Return whether epochs remain to be trained."""
        return self.epochs_done < self.config.train.epochs


def check(config: ExperimentConfig, verbose: bool = False, local: bool = False) -> RunPlan:
    """Return the run's plan after every check that can refuse it, before any MLflow run is created or touched.

    Config, data and batch size, storage, tracking store and run folder; when epochs remain, Ray and the
    cluster's resources for the workers and the method's run-scoped actors (a local run starts Ray only
    for those actors).
    """
    if local and config.ray.num_workers > 1:
        raise ConfigError(
            f"ray.num_workers = {config.ray.num_workers}: a local run is one process; "
            "drop the local mode or set ray.num_workers=1"
        )
    method_class = validate(config)
    sources = open_data(config)
    try:
        method_class.validate_data(config, len(sources["train"]))
    except ValueError as exc:
        raise ConfigError(f"invalid config: {exc}") from None
    storage = storage_root(config.ray)
    check_storage(storage)
    tracking_uri = reachable_store(config.tracking)
    run_name, resume_from = resolve_run(config, Path(storage))
    actor_specs = method_class.resources(config)
    plan = RunPlan(
        config=config,
        method_class=method_class,
        sources=sources,
        storage=storage,
        tracking_uri=tracking_uri,
        run_name=run_name,
        run_dir=Path(storage) / run_name,
        resume_from=resume_from,
        actor_specs=actor_specs,
        local=local,
    )
    if plan.needs_training and (actor_specs or not local):
        ensure_ray(config.ray, verbose)
        local = cluster_address(config.ray) is None
        check_resources(config.ray, local, required_resources(actor_specs) if actor_specs else None)
    return plan


def announce(plan: RunPlan) -> None:
    """Print what this attempt does: start, resume (after any unusable newer checkpoint) or report a finished run."""
    announce_torn_checkpoints(plan.run_dir, plan.resume_from)
    epochs = plan.config.train.epochs
    if plan.resume_from is None:
        print(f"starting run '{plan.run_name}' in {plan.run_dir}")
    elif plan.needs_training:
        print(f"resuming run '{plan.run_name}' from {plan.resume_from} ({plan.epochs_done}/{epochs} epochs done)")
    else:
        print(f"run '{plan.run_name}' already finished ({plan.epochs_done}/{epochs} epochs): reporting its result")


def open_record(plan: RunPlan) -> tuple[RunHandle, float | None, bool]:
    """Return the run's MLflow handle (a resumed run's own), its raw-pixel baseline, and whether that is new.

    The baseline decodes every image of both splits: an unreadable one stops the command here, before
    any MLflow run is touched.
    """
    config = plan.config
    existing_run_id = read_run_id(plan.run_dir)
    baseline = recorded_metric(plan.tracking_uri, existing_run_id, PIXEL_BASELINE)
    new_baseline = config.eval.pixel_baseline and baseline is None
    if new_baseline:
        baseline = pixel_baseline(config, plan.sources)
    run, changed = open_run(plan.tracking_uri, config.tracking, plan.run_name, flatten(config), existing_run_id)
    if changed:
        listed = ", ".join(f"{key} {old} -> {new}" for key, (old, new) in sorted(changed.items()))
        print(f"this attempt changes settings that do not alter training: {listed} (tagged on the MLflow run)")
    return run, baseline, new_baseline


@contextlib.contextmanager
def ended_on_failure(plan: RunPlan, run: RunHandle) -> Iterator[None]:
    """Run the block; however it fails, end the MLflow run before the error goes on.

    An interrupt (KeyboardInterrupt, ``INTERRUPTED`` set by a signal handler, or an end-here verdict nobody
    asked for as a stop) ends it KILLED and raises RunInterrupted; an end-here verdict after a stop request
    ends it KILLED, tagged ``stopped_early`` with its epochs, and raises RunStopped; any other error ends it FAILED.
    """
    try:
        yield
    except EndedEarly as early:
        ended = RunStopped if early.stop_requested else RunInterrupted
        if early.stop_requested:
            set_tags(run, {STOPPED_TAG: str(early.epochs_done)})
        finish_run(run, "KILLED")
        raise ended(plan.run_name, plan.run_dir, early.epochs_done, plan.config.train.epochs, run.run_id) from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) or INTERRUPTED.is_set():
            finish_run(run, "KILLED")
            saved = latest_checkpoint(plan.run_dir)
            epochs_saved = checkpoint_epoch(saved) if saved else 0
            raise RunInterrupted(
                plan.run_name, plan.run_dir, epochs_saved, plan.config.train.epochs, run.run_id
            ) from None
        if isinstance(exc, RunActorDied):
            set_tags(run, {ERROR_TAG: str(exc)})
        finish_run(run, "FAILED")
        raise


def describe_run(plan: RunPlan, run: RunHandle, baseline: float | None, new_baseline: bool) -> None:
    """Write the run folder's MLflow id and config, and log the config, the run's tags and a new baseline."""
    config = plan.config
    write_run_id(plan.run_dir, run.run_id, run.tracking_uri)
    write_run_config(plan.run_dir, config)
    log_text(run, to_yaml(config), CONFIG_ARTIFACT)
    set_tags(run, {RUN_NAME_TAG: plan.run_name, RUN_DIR_TAG: str(plan.run_dir), METHOD_TAG: config.method.name})
    print(f"MLflow run {run.run_id} in {run.tracking_uri}")
    if baseline is not None and new_baseline:
        log_metrics(run, {PIXEL_BASELINE: baseline}, step=0)
    if baseline is not None:
        print(f"raw-pixel kNN baseline: {baseline:.2f}%")


def record_result(plan: RunPlan, run: RunHandle, baseline: float | None, started: float) -> PretrainResult:
    """Return the finished run's result after logging its final figures, summary and model, and ending it FINISHED."""
    config = plan.config
    checkpoint_dir = latest_checkpoint(plan.run_dir)
    metrics = {} if checkpoint_dir is None else checkpoint_metrics(checkpoint_dir)
    final = {f"final/{k}": v for k, v in metrics.items() if k.startswith(("knn/", "online/", "train/loss"))}
    if latest_metric(run, "final/train/loss") is None:
        log_metrics(run, final, step=config.train.epochs)
    result = PretrainResult(
        run_name=plan.run_name,
        metrics=metrics,
        checkpoint_path=str(checkpoint_dir) if checkpoint_dir else None,
        mlflow_run_id=run.run_id,
        tracking_uri=run.tracking_uri,
        pixel_knn_top1=baseline,
        wall_time_s=time.time() - started,
    )
    set_tags(run, {CHECKPOINT_TAG: result.checkpoint_path or ""})
    log_text(run, json.dumps(result.summary(), indent=2), SUMMARY_ARTIFACT)
    if config.tracking.log_model:
        log_backbone_model(run, plan.run_dir, config.tracking.register_model)
    if checkpoint_dir is not None and config.eval.pictures:
        draw_pictures(plan, run, checkpoint_dir)
    finish_run(run, "FINISHED")
    return result


def evaluate(plan: RunPlan, result: PretrainResult, verbose: bool = False) -> None:
    """Run the linear evaluation of the finished run, print its table and attach its figures to ``result``."""
    evaluation = evaluate_and_record(plan.run_dir, tracking_uri=result.tracking_uri, verbose=verbose)
    print(f"linear evaluation ({evaluation.protocol}{', reused' if evaluation.reused else ''}):")
    print(evaluation.table())
    result.evaluation = {name: network.metrics() for name, network in evaluation.networks.items()}


def pretrain(
    config: ExperimentConfig, verbose: bool = False, local: bool = False, on_epoch: EpochHook | None = None
) -> PretrainResult:
    """Run (or resume) one pretraining run end to end and return its result: check, record, fit, evaluate.

    A failure in the checks raises before an MLflow run is created or touched; after that the run ends
    KILLED on an interrupt (raising RunInterrupted) and FAILED on any other error (see ``ended_on_failure``).
    ``local`` trains in this process instead of on Ray Train (one worker; for debuggers and profilers).
    ``on_epoch`` steers the run: it gets each epoch's metrics as they land and returns whether to go on
    (a sweep trial hands them to Tune and answers with the scheduler's decision).
    """
    started = time.time()
    plan = check(config, verbose, local)
    announce(plan)
    run, baseline, new_baseline = open_record(plan)
    with ended_on_failure(plan, run):
        describe_run(plan, run, baseline, new_baseline)
        if plan.needs_training:
            _fit(plan, run, on_epoch)
        result = record_result(plan, run, baseline, started)
    if config.eval.linear.enabled:
        evaluate(plan, result, verbose)
    return result


def log_backbone_model(run: RunHandle, run_dir: Path, registered_name: str | None) -> str | None:
    """Return the URI of the finished run's MLflow model ``backbone``, or None (tagged ``model_error``) if it failed.

    Training has finished and its checkpoints are complete: a model that cannot be logged (a store
    without a registry, a network torch.export refuses) is a warning, never a run left RUNNING or FAILED.
    """
    try:
        uri = log_final_model(run, run_dir, registered_name)
    except Exception as exc:  # noqa: BLE001 - any failure here leaves the finished run as it is; say why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        set_tags(run, {MODEL_ERROR_TAG: reason})
        print(
            f"warning: the backbone could not be logged as an MLflow model ({reason}); the run is complete: "
            f"python -m pipeline.export --run {run_dir} --format state_dict --out backbone.pt writes its weights"
        )
        return None
    print(f"MLflow model: {uri}")
    return uri


def draw_pictures(plan: RunPlan, run: RunHandle, checkpoint: Path) -> Path | None:
    """Return the test embeddings' 2-D map (PNG in the run folder, and an artifact), or None (tagged) if it failed.

    Its backbone features are cached where the linear evaluation's features protocol finds them. Like the
    MLflow model, a picture that cannot be drawn is a warning, never a finished run left unfinished.
    """
    path = plan.run_dir / PICTURES_DIR / f"embedding_map_{checkpoint.name}.png"
    try:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        features, labels = backbone_test_features(plan.config, checkpoint, plan.run_dir, device)
        title = f"{plan.config.method.name}: test embeddings after {checkpoint_epoch(checkpoint)} epochs"
        embedding_map_png(features, labels, title, path)
        log_artifact(run, path, PICTURES_DIR)
    except Exception as exc:  # noqa: BLE001 - training has finished; a missing picture is a warning, say why
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        set_tags(run, {PICTURE_ERROR_TAG: reason})
        print(f"warning: the embedding map could not be drawn ({reason}); the run is complete")
        return None
    print(f"embedding map: {path}")
    return path


def _fit(plan: RunPlan, run: RunHandle, on_epoch: EpochHook | None = None) -> None:
    """Create the run's actors and relay, train, tear both down; raise if training failed or ``on_epoch`` ended it."""
    config = plan.config
    # A local loop prints its progress itself and needs a relay only to be steered; Ray Train's workers need one.
    relay = ProgressRelay(plan.run_name, on_epoch, local=plan.local) if on_epoch or not plan.local else None
    handle = relay.handle if relay is not None else None
    ended_early: EndedEarly | None = None
    try:
        # A local relay is an object of this process: the run's actors (other processes) print their own lines.
        with RunResources(plan.actor_specs, plan.run_name, progress=None if plan.local else handle) as handles:
            inputs = LoopInputs(
                config=config.model_dump(mode="json"),
                run_dir=str(plan.run_dir),
                mlflow=asdict(run),
                resources=handles,
                progress=handle,
                resume_from=str(plan.resume_from) if plan.resume_from is not None else None,
                steered=on_epoch is not None,
            )
            try:
                if plan.local:
                    run_loop(inputs, LocalSession(plan.run_dir, use_gpu=config.ray.gpus_per_worker > 0))
                else:
                    # Field by field, not asdict: that would deep-copy the actor handles and the relay.
                    loop_config = {item.name: getattr(inputs, item.name) for item in fields(inputs)}
                    fit(
                        make_trainer(
                            train_loop_per_worker,
                            loop_config,
                            config.ray,
                            plan.run_name,
                            plan.storage,
                            checkpoints_kept=2,
                        )
                    )
            except Exception:
                # Workers see a dead actor as a long remote traceback; the driver names the actor instead.
                dead = dead_actors(handles)
                if not dead or INTERRUPTED.is_set():
                    raise
                saved = latest_checkpoint(plan.run_dir)
                epoch = (checkpoint_epoch(saved) if saved is not None else 0) + 1
                name = actor_name(plan.run_name, dead[0])
                raise RunActorDied(dead[0], name, epoch, config.train.epochs, saved) from None
        saved = latest_checkpoint(plan.run_dir)
        epochs_done = checkpoint_epoch(saved) if saved is not None else 0
        if relay is not None and epochs_done < config.train.epochs and relay.ended_early(epochs_done):
            ended_early = EndedEarly(epochs_done, relay.stop_requested())
    finally:
        if relay is not None:
            relay.close()
    if ended_early is not None:
        raise ended_early
