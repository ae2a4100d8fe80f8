"""The per-worker training loop: one function, run by Ray Train's workers or in the calling process.

``run_loop`` gets everything about where it runs (rank, world size, device, the checkpoint the runtime
registered, where epochs are reported) from its ``WorkerSession`` (``pipeline.training.sessions``); Ray Train's
entry point is ``train_loop_per_worker``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import ExperimentConfig, build_config
from pipeline.data.batched_views import BatchedViews, DeviceImage, augmentation_generator
from pipeline.data.build import build_source
from pipeline.data.loader import EpochLoader, build_loader
from pipeline.data.recipes import EVAL_VIEW
from pipeline.data.views import build_view, build_views
from pipeline.evaluation.monitor import extract_features, gather_by_index, knn_monitor, sharded_top1
from pipeline.evaluation.online_probe import ONLINE_PROBE_VIEW, OnlineProbe, probe_enabled
from pipeline.evaluation.pictures import embedding_map_png
from pipeline.methods import EpochContext, Method, StepInfo, build_method, get_method
from pipeline.record.names import AUTOCAST_TAG, PICTURES_DIR
from pipeline.record.run import RunHandle, last_logged_step, log_artifact, log_metrics, log_text, run_tags, set_tags
from pipeline.runtime.progress import ProgressReporter, format_duration
from pipeline.training.checkpoints import checkpoint_epoch, incomplete_reason, load_checkpoint
from pipeline.training.compilation import compile_networks
from pipeline.training.faults import FaultHooks
from pipeline.training.optim import build_optimizer, lr_schedule
from pipeline.training.seeding import seed_everything
from pipeline.training.sessions import RayTrainSession, WorkerSession
from pipeline.training.step import autocast_dtype, batch_to_device, cpu_has_native_bf16, to_device, train_step


def _mean_across_workers(sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    """Return each summed metric divided by ``count`` and averaged across workers (one host sync)."""
    if not sums:
        return {}
    keys = sorted(sums)
    stacked = torch.stack([sums[key] for key in keys]) / max(count, 1)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(stacked)
        stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist(), strict=True))


def _broadcast_buffers(module: nn.Module) -> None:
    """Give every worker rank 0's buffers (BN statistics, queue) before evaluation and checkpoints."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


@dataclass(frozen=True)
class LoopInputs:
    """What the driver hands every worker: config, run folder, MLflow run, run-scoped actors, relay, resume point."""

    config: dict[str, Any]  # the validated ExperimentConfig as JSON-ready data (rebuilt in the worker)
    run_dir: str
    mlflow: dict[str, str] | None = None  # RunHandle fields; rank 0 logs each epoch there
    resources: dict[str, Any] = field(default_factory=dict)  # the run-scoped actors' handles, by key
    progress: Any | None = None  # the driver's progress relay (None: print here)
    resume_from: str | None = None  # the driver's choice of checkpoint folder
    steered: bool = False  # after each epoch, wait for the driver's verdict (go on or end here)


@dataclass
class WorkerSetup:
    """Everything one worker builds before its first epoch."""

    config: ExperimentConfig
    session: WorkerSession
    rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None  # train.amp resolved for this worker's device
    method: Method
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: EpochLoader
    train_images: EpochLoader
    test_images: EpochLoader
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    learning_rates: np.ndarray
    progress: ProgressReporter
    device_views: BatchedViews | None  # data.augment_on = device: the views, made per batch after the transfer
    online_probe: OnlineProbe | None  # eval.online_probe: a linear head trained beside the method

    @property
    def total_steps(self) -> int:
        """Return the number of optimiser steps of the whole run."""
        return len(self.train_loader) * self.config.train.epochs


def _build(config: ExperimentConfig, session: WorkerSession, progress: ProgressReporter) -> WorkerSetup:
    """Return the worker's data, method, DDP wrapper, optimiser and schedules (the driver validated the config)."""
    rank, world_size, device = session.rank, session.world_size, session.device
    local_batch = config.train.batch_size // world_size
    method_class = get_method(config.method.name)
    data, workers = config.data, config.data.num_workers

    eval_view = build_view(EVAL_VIEW, data)
    # The training set under the evaluation view serves the kNN memory bank and the methods' per-epoch passes.
    train_image_source = build_source(data, "train", transform=eval_view)
    test_image_source = build_source(data, "test", transform=eval_view)
    num_classes = train_image_source.num_classes
    with_probe = probe_enabled(config.eval.online_probe, train_image_source.labels, num_classes)
    recipes = method_class.views(config)
    if with_probe:
        # The evaluation view draws no random numbers: the method's own views stay what they are without the probe.
        recipes = {**recipes, ONLINE_PROBE_VIEW: EVAL_VIEW}
    device_views = BatchedViews(recipes, data) if data.augment_on == "device" else None
    transform = DeviceImage(data) if device_views is not None else build_views(recipes, data)
    train_source = build_source(data, "train", transform=transform)
    shard = {"rank": rank, "world_size": world_size, "seed": data.seed, "num_workers": workers}
    train_loader = build_loader(train_source, local_batch, shuffle=True, drop_last=True, **shard)
    if len(train_loader) == 0:
        raise ValueError(
            f"the training set ({len(train_source)} images) is smaller than one batch per worker ({local_batch})"
        )
    train_images = build_loader(train_image_source, local_batch, shuffle=False, drop_last=False, **shard)
    test_images = build_loader(test_image_source, local_batch, shuffle=False, drop_last=False, **shard)

    seed_everything(config.train.seed)
    method = build_method(config, train_source.num_classes, rank, world_size)
    if method.context.batch_norm == "sync":
        method = nn.SyncBatchNorm.convert_sync_batchnorm(method)
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    method = method.to(device, memory_format=memory_format)
    # Compiled in place before DDP wraps it: parameters and state_dict keys stay the eager ones.
    compile_networks(method, config.train.compile)
    model: nn.Module = method
    if world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(method, device_ids=device_ids, broadcast_buffers=False)
    optimizer = build_optimizer(config.optim, method)
    scaler = torch.amp.GradScaler(device.type, enabled=config.train.amp == "fp16")
    learning_rates = lr_schedule(config.optim, config.train.batch_size, len(train_loader), config.train.epochs)
    backbone = method.evaluation_networks()["backbone"]
    online_probe = OnlineProbe(backbone, num_classes, config.eval.online_probe, device) if with_probe else None
    return WorkerSetup(
        config=config,
        session=session,
        rank=rank,
        world_size=world_size,
        device=device,
        amp_dtype=autocast_dtype(config.train.amp, device),
        method=method,
        model=model,
        optimizer=optimizer,
        scaler=scaler,
        train_loader=train_loader,
        train_images=train_images,
        test_images=test_images,
        train_labels=torch.as_tensor(train_image_source.labels, dtype=torch.long),
        test_labels=torch.as_tensor(test_image_source.labels, dtype=torch.long),
        num_classes=num_classes,
        learning_rates=learning_rates,
        progress=progress,
        device_views=device_views,
        online_probe=online_probe,
    )


def _checkpoint_to_resume(session: WorkerSession, resume_from: str | None) -> tuple[Path | None, Any]:
    """Return the newer of the session's registered checkpoint and the driver's ``resume_from`` folder.

    Ray registers a checkpoint a moment after its folder is complete; a run interrupted in between
    would otherwise restart from an older epoch than the one on disk.
    """
    ray_checkpoint = session.registered_checkpoint()
    candidates: list[tuple[int, Path | None, Any]] = []
    # A folder Ray registered can be torn afterwards (a copy cut short, a disk problem): on local storage it
    # must pass the same completeness check as the driver's choice.
    local_ray_folder = Path(ray_checkpoint.path) if ray_checkpoint is not None else None
    if local_ray_folder is not None and (not local_ray_folder.is_dir() or incomplete_reason(local_ray_folder) is None):
        candidates.append((checkpoint_epoch(local_ray_folder), None, ray_checkpoint))
    if resume_from is not None:
        candidates.append((checkpoint_epoch(Path(resume_from)), Path(resume_from), None))
    if not candidates:
        return None, None
    _, folder, checkpoint = max(candidates, key=lambda candidate: candidate[0])
    return folder, checkpoint


def _restore(setup: WorkerSetup, resume_from: str | None) -> tuple[int, int]:
    """Return (first epoch to train, global step) after loading the newest checkpoint, if any."""
    folder, ray_checkpoint = _checkpoint_to_resume(setup.session, resume_from)
    if folder is None and ray_checkpoint is None:
        return 0, 0
    if ray_checkpoint is not None:
        with ray_checkpoint.as_directory() as local:
            state = load_checkpoint(Path(local), setup.device)
        where = ray_checkpoint.path
    else:
        state = load_checkpoint(folder, setup.device)
        where = str(folder)
    setup.method.load_state_dict(state["method"])
    setup.optimizer.load_state_dict(state["optimizer"])
    setup.scaler.load_state_dict(state["scaler"])
    if setup.online_probe is not None and "online_probe" in state:
        setup.online_probe.load_state_dict(state["online_probe"])
    elif setup.online_probe is not None and setup.rank == 0:
        setup.progress.say("the checkpoint holds no online probe (it was off): the probe starts from zero here")
    if setup.rank == 0:
        setup.progress.say(f"resumed from {where}: {state['epoch']} epochs done, step {state['global_step']}")
    return int(state["epoch"]), int(state["global_step"])


def _train_epoch(setup: WorkerSetup, epoch: int, global_step: int, faults: FaultHooks) -> tuple[dict[str, float], int]:
    """Run one epoch; return the epoch's mean losses and learning rate, and the new global step."""
    config, device, amp_dtype = setup.config, setup.device, setup.amp_dtype
    setup.train_loader.set_epoch(epoch)
    generator = augmentation_generator(device, config.train.seed, setup.rank, epoch)
    steps = len(setup.train_loader)
    sums: dict[str, torch.Tensor] = {}
    probe_sums: dict[str, torch.Tensor] = {}
    started = time.perf_counter()
    for step_in_epoch, raw in enumerate(setup.train_loader):
        batch = batch_to_device(raw, device, config.train.channels_last)
        if setup.device_views is not None:
            batch.views = to_device(setup.device_views(batch.views, generator), device, config.train.channels_last)
        probe_images = batch.views.pop(ONLINE_PROBE_VIEW, None)
        losses = train_step(
            setup.model,
            setup.method,
            setup.optimizer,
            setup.scaler,
            batch,
            StepInfo(epoch, global_step, setup.total_steps),
            float(setup.learning_rates[global_step]),
            amp_dtype,
        )
        for key, value in losses.items():
            sums[key] = sums.get(key, 0) + value.float()
        if setup.online_probe is not None:
            for key, value in setup.online_probe.step(probe_images, batch.labels, amp_dtype).items():
                probe_sums[key] = probe_sums.get(key, 0) + value
        global_step += 1
        done = step_in_epoch + 1
        if done == 1:
            faults.maybe_pause("mid_epoch", epoch + 1)
        if setup.rank == 0 and done % config.train.log_every_steps == 0 and done < steps:
            elapsed = time.perf_counter() - started
            rate = done * config.train.batch_size / elapsed
            setup.progress.say(
                f"  epoch {epoch + 1} step {done}/{steps} loss {float(losses['loss']):.4f} "
                f"{rate:.0f} img/s, epoch ETA {format_duration(elapsed / done * (steps - done))}"
            )
    metrics = {f"train/{key}": value for key, value in _mean_across_workers(sums, steps).items()}
    if probe_sums:
        probe = _mean_across_workers(probe_sums, steps)
        labelled = max(probe["labelled"], 1e-12)
        metrics["online/train_loss"] = probe["loss_sum"] / labelled
        metrics["online/train_top1"] = 100.0 * probe["correct"] / labelled
    metrics["train/lr"] = float(setup.learning_rates[global_step - 1])
    return metrics, global_step


def _epoch_context(setup: WorkerSetup, epoch: int, resources: dict[str, Any]) -> EpochContext:
    """Return what the method gets before ``epoch``: device, rank, the run's resources and the training images."""
    return EpochContext(
        epoch=epoch,
        device=setup.device,
        rank=setup.rank,
        world_size=setup.world_size,
        num_train=int(setup.train_labels.shape[0]),
        train_images=setup.train_images,
        resources=resources,
        autocast_dtype=setup.amp_dtype,
        channels_last=setup.config.train.channels_last,
    )


def _draw_test_map(setup: WorkerSetup, features: torch.Tensor, index: torch.Tensor, epochs: int, path: Path) -> None:
    """Draw the test embeddings' 2-D map at ``path`` on rank 0 (every rank sends it its shard).

    A map that cannot be drawn is a warning line and no file: a picture is never worth the run. A file left
    by an attempt interrupted after this epoch is removed first, so that only this attempt's map is logged.
    """
    gathered = gather_by_index(features, index, int(setup.test_labels.shape[0]), destination=0)
    if gathered is None:
        return
    path.unlink(missing_ok=True)
    try:
        title = f"{setup.config.method.name}: test embeddings after {epochs} epochs"
        embedding_map_png(gathered.cpu(), setup.test_labels, title, path)
    except Exception as error:  # noqa: BLE001 - any failure of the drawing leaves training as it is; say why
        setup.progress.say(f"warning: the embedding map after {epochs} epochs could not be drawn ({error})")


def _monitor(setup: WorkerSetup, knn_due: bool, picture: Path | None = None, epochs: int = 0) -> dict[str, float]:
    """Return this epoch's test-split figures: weighted-kNN top-1 when due, the online probe's top-1 when it runs.

    The test split is embedded once for both and, when ``picture`` is given, for the map rank 0 draws there
    after ``epochs`` epochs; the kNN bank is the training set under the evaluation view.
    """
    if not knn_due and setup.online_probe is None and picture is None:
        return {}
    config = setup.config
    backbone = setup.method.evaluation_networks()["backbone"]
    features, index = extract_features(
        backbone, setup.test_images, setup.device, setup.amp_dtype, config.train.channels_last, normalize=False
    )
    figures = {}
    if setup.online_probe is not None:
        figures["online/top1"] = sharded_top1(setup.online_probe.predict(features), index, setup.test_labels)
    if knn_due:
        figures["knn/top1"] = knn_monitor(
            backbone,
            setup.train_images,
            setup.train_labels,
            features,
            index,
            setup.test_labels,
            setup.num_classes,
            config.eval.knn_k,
            config.eval.knn_temperature,
            setup.device,
            setup.amp_dtype,
            config.train.channels_last,
        )
    if picture is not None:
        _draw_test_map(setup, features, index, epochs, picture)
    return figures


def _save_and_report(setup: WorkerSetup, metrics: dict[str, float], epochs_done: int, global_step: int) -> None:
    """Report metrics from every worker; rank 0 attaches the full-state checkpoint."""
    if setup.rank != 0:
        setup.session.report(metrics, None, epochs_done)
        return
    state = {
        "epoch": epochs_done,
        "global_step": global_step,
        "method": setup.method.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "scaler": setup.scaler.state_dict(),
        "metrics": metrics,
    }
    if setup.online_probe is not None:
        state["online_probe"] = setup.online_probe.state_dict()
    setup.session.report(metrics, state, epochs_done)


def _epoch_picture(config: ExperimentConfig, run_dir: Path, epochs_done: int) -> Path | None:
    """Return where this epoch's test-embedding map goes when ``eval.pictures_every`` asks for one, else None.

    The last epoch's map is the driver's (drawn from the final checkpoint), so the loop never draws it.
    """
    every = config.eval.pictures_every
    if not config.eval.pictures or every == 0 or epochs_done % every or epochs_done == config.train.epochs:
        return None
    return run_dir / PICTURES_DIR / f"embedding_map_epoch_{epochs_done:04d}.png"


def _record_pictures(run: RunHandle, run_dir: Path, pictures: dict[str, bytes]) -> None:
    """Save a method's pictures (PNG bytes by file name) in the run folder's ``pictures/`` and log them there."""
    for name, png in pictures.items():
        path = run_dir / PICTURES_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        log_artifact(run, path, PICTURES_DIR)


def _go_on(setup: WorkerSetup, epochs_done: int) -> bool:
    """Return the driver's verdict after ``epochs_done`` (True: go on), the same on every worker.

    Rank 0 waits for it at the relay and gives it to the others (one broadcast), so every worker
    leaves the loop after the same epoch.
    """
    go_on = setup.progress.verdict(epochs_done) if setup.rank == 0 else True
    if dist.is_initialized() and setup.world_size > 1:
        flag = torch.tensor([int(go_on)], device=setup.device)
        dist.broadcast(flag, src=0)
        go_on = bool(flag.item())
    return go_on


def _record_autocast(run: RunHandle, setup: WorkerSetup) -> None:
    """Tag the run with ``train.amp`` as this device resolved it, keeping an earlier attempt's if it differed."""
    numerics = str(setup.amp_dtype).removeprefix("torch.") if setup.amp_dtype is not None else "off"
    recorded = (run_tags(run.tracking_uri, run.run_id) or {}).get(AUTOCAST_TAG)
    # A run resumed on other hardware may change numerics mid-run; the tag says so instead of hiding it.
    if recorded is not None:
        numerics = recorded if recorded.split(", then ")[-1] == numerics else f"{recorded}, then {numerics}"
    hint = ""
    if setup.device.type == "cpu" and setup.amp_dtype is None and cpu_has_native_bf16():
        hint = "; this CPU has bf16 units: --set train.amp=bf16 trains faster, in other numerics"
    setup.progress.say(f"autocast {numerics} (train.amp {setup.config.train.amp} on {setup.device.type}){hint}")
    set_tags(run, {AUTOCAST_TAG: numerics})


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Train one Ray Train worker's share of the run (``loop_config`` holds a ``LoopInputs``'s fields)."""
    run_loop(LoopInputs(**loop_config), RayTrainSession())


def run_loop(inputs: LoopInputs, session: WorkerSession) -> None:
    """Train this worker's share of the run in ``inputs``, resuming from the newest checkpoint, wherever it runs."""
    config = build_config(inputs.config)
    run_dir = Path(inputs.run_dir)
    resources = inputs.resources
    progress = ProgressReporter(inputs.progress)
    setup = _build(config, session, progress)
    start_epoch, global_step = _restore(setup, inputs.resume_from)
    run = RunHandle(**inputs.mlflow) if setup.rank == 0 and inputs.mlflow else None
    if run is not None:
        _record_autocast(run, setup)
    logged_up_to = last_logged_step(run, "train/loss") if run else -1
    faults = FaultHooks(run_dir, setup.rank, setup.world_size, config.train.inject_failure_at_epoch)
    epoch_times: list[float] = []
    for epoch in range(start_epoch, config.train.epochs):
        started = time.perf_counter()
        seed_everything(config.train.seed, setup.rank, epoch)
        faults.maybe_fail(epoch + 1)
        faults.maybe_pause("epoch_start", epoch + 1)
        setup.method.on_epoch_start(_epoch_context(setup, epoch, resources))
        report = setup.method.epoch_report()
        metrics, global_step = _train_epoch(setup, epoch, global_step, faults)
        metrics.update(report.metrics)
        train_time = time.perf_counter() - started
        metrics["perf/images_per_s"] = len(setup.train_loader) * config.train.batch_size / train_time
        _broadcast_buffers(setup.method)
        knn_due = (epoch + 1) % config.eval.knn_every == 0 or epoch + 1 == config.train.epochs
        if knn_due:
            faults.maybe_pause("knn", epoch + 1)
        picture = _epoch_picture(config, run_dir, epoch + 1)
        metrics.update(_monitor(setup, knn_due, picture, epoch + 1))
        metrics["perf/epoch_time_s"] = time.perf_counter() - started
        metrics["epoch"] = epoch + 1
        epoch_times.append(metrics["perf/epoch_time_s"])
        # Metrics go to MLflow before the checkpoint: an interrupt between the two retrains this epoch, which
        # then skips logging (same seed, same values) instead of leaving the epoch unlogged forever.
        if run is not None and epoch > logged_up_to:
            log_metrics(run, metrics, step=epoch)
            for artifact_file, text in report.artifacts.items():
                log_text(run, text, artifact_file)
            _record_pictures(run, run_dir, report.pictures)
            if picture is not None and picture.is_file():
                log_artifact(run, picture, PICTURES_DIR)
        _save_and_report(setup, metrics, epoch + 1, global_step)
        faults.maybe_pause("after_report", epoch + 1)
        if setup.rank == 0:
            eta = format_duration(float(np.mean(epoch_times)) * (config.train.epochs - epoch - 1))
            knn = f" knn {metrics['knn/top1']:.2f}%" if "knn/top1" in metrics else ""
            online = f" online {metrics['online/top1']:.2f}%" if "online/top1" in metrics else ""
            setup.progress.say(
                f"epoch {epoch + 1}/{config.train.epochs} loss {metrics['train/loss']:.4f}{knn}{online} "
                f"{metrics['perf/images_per_s']:.0f} img/s {metrics['perf/epoch_time_s']:.1f}s ETA {eta}"
            )
            setup.progress.epoch(epoch + 1, metrics)
        # A steered run waits for the driver's word between epochs, so a scheduler's stop lands at the epoch it judged.
        if inputs.steered and epoch + 1 < config.train.epochs and not _go_on(setup, epoch + 1):
            if setup.rank == 0:
                setup.progress.say(f"the driver ended the run after epoch {epoch + 1}/{config.train.epochs}")
            return
