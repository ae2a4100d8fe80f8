"""Ray for a run: joining or starting a cluster quietly, checking resources before work, fitting a trainer.

Shared by pretraining (``pipeline.runtime.launch``) and the augmented linear stage (``pipeline.evaluation.linear_ray``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
from ray.train.torch import TorchConfig, TorchTrainer

from pipeline.config import RayConfig
from pipeline.data.errors import DataError

log = logging.getLogger(__name__)

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


# The per-node agents a raylet starts. Each exits once it sees its raylet gone, but first tries to report that to the
# GCS, which died with the raylet: after a driver that started a local Ray is SIGKILLed they linger (about a minute on
# a 2-core machine, longer on a busy one).
RAY_AGENT_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")
PROC = Path("/proc")
# How long stopped agents get to disappear before the new local Ray starts anyway.
AGENT_STOP_WAIT_S = 5.0


def process_title(pid: int) -> str:
    """Return the first word of a process's command line (its title for Ray's processes); "" when it is gone."""
    try:
        first = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return ""
    return first.decode(errors="replace").strip()


def parent_pid(pid: int) -> int:
    """Return a process's parent id (0 when the process is gone)."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0
    # The command name in field 2 may hold spaces and parentheses: the fields after its closing one are plain.
    return int(stat.rsplit(")", 1)[1].split()[1])


def orphaned_ray_agents() -> list[int]:
    """Return the ids of this user's Ray agents whose parent is no longer a raylet: leftovers of a dead local Ray.

    A live agent's parent is always the raylet that started it (Ray's agents apply this same test to decide to
    exit), so an agent of a running cluster, this user's or another's, in a container or not, is never listed.
    """
    if not PROC.is_dir():
        return []
    uid = os.getuid()
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
        except OSError:
            continue
        pid = int(entry.name)
        if process_title(pid) not in RAY_AGENT_TITLES:
            continue
        parent = parent_pid(pid)
        if parent and Path(process_title(parent)).name != "raylet":
            found.append(pid)
    return found


def stop_orphaned_ray_agents() -> list[int]:
    """Return the ids of the orphaned Ray agents (``orphaned_ray_agents``) after killing them and waiting briefly."""
    stopped = orphaned_ray_agents()
    for pid in stopped:
        # Checked again just before the kill, so that an agent that exited meanwhile cannot lend its id to another
        # process. Their raylet and GCS are gone: nothing is left for them to do or report, so they are killed outright.
        if process_title(pid) in RAY_AGENT_TITLES:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + AGENT_STOP_WAIT_S
    while time.monotonic() < deadline and any((PROC / str(pid)).exists() for pid in stopped):
        time.sleep(0.1)
    if stopped:
        log.warning("stopped %d Ray agent process(es) left by a local Ray whose driver was killed", len(stopped))
    return stopped


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
        stop_orphaned_ray_agents()
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


def fit(trainer: TorchTrainer) -> None:
    """Run ``trainer`` to the end; raise a worker's DataError as one line, any other failure as it is."""
    error = fit_in_thread(trainer)
    if isinstance(error, TrainingFailedError):
        raise training_failure(error) from None
    if error is not None:
        raise error


def make_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    config: RayConfig,
    name: str,
    storage: str,
    checkpoints_kept: int | None = None,
) -> TorchTrainer:
    """Return a TorchTrainer running ``loop`` on the configured workers (gloo on CPU, NCCL on GPUs)."""
    use_gpu = config.gpus_per_worker > 0
    resources = {"CPU": config.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = config.gpus_per_worker
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=use_gpu,
            resources_per_worker=resources,
            placement_strategy=config.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_kept),
            worker_runtime_env={"env_vars": worker_env()},
        ),
    )
