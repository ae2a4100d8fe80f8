"""Where a training worker runs: on Ray Train (any world size) or in the calling process (``--local``).

The training loop (``pipeline.training.loop``) asks its session for its rank, world size and device, for the
checkpoint to resume from, and hands it each epoch's metrics and checkpoint. ``RayTrainSession`` is
Ray Train's worker context; ``LocalSession`` is one process writing the same ``epoch_NNNN`` folders into
the run folder itself (Ray Train V2's own local mode keeps no checkpoint, so it cannot resume), so that
a run started in one mode resumes in the other.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from pipeline.training.checkpoints import checkpoint_folders, epoch_dir_name, incomplete_reason, write_checkpoint


class WorkerSession(Protocol):
    """What the training loop needs from wherever it runs."""

    rank: int
    world_size: int
    device: torch.device

    def registered_checkpoint(self) -> Any | None:
        """Return the runtime's newest registered checkpoint (a ``ray.train.Checkpoint``), None if none."""

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None, epochs_done: int) -> None:
        """Hand over an epoch's metrics and, from rank 0, the full state to checkpoint as ``epoch_NNNN``."""


class RayTrainSession:
    """A Ray Train worker: rank, world and device from Ray's context; checkpoints registered by Ray."""

    def __init__(self) -> None:
        import ray.train
        from ray.train.torch import get_device

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = get_device()

    def registered_checkpoint(self) -> Any | None:
        """Return Ray's latest registered checkpoint (None if Ray has none); it may live on remote storage."""
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None, epochs_done: int) -> None:
        """Report ``metrics`` to Ray Train, with the checkpoint of ``state`` when given (rank 0)."""
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            write_checkpoint(Path(folder), state)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(folder),
                checkpoint_dir_name=epoch_dir_name(epochs_done),
            )


class LocalSession:
    """The calling process as the only worker: checkpoints written into the run folder, the newest ``kept`` kept."""

    def __init__(self, run_dir: Path, use_gpu: bool = False, kept: int = 2) -> None:
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("ray.gpus_per_worker > 0 asks for a GPU, but torch sees no CUDA device in this process")
        self.rank, self.world_size = 0, 1
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")
        self.run_dir, self.kept = Path(run_dir), kept

    def registered_checkpoint(self) -> Any | None:
        """Return None: the driver's choice (the newest complete folder of the run) is the only one."""
        return None

    def report(self, metrics: dict[str, float], state: dict[str, Any] | None, epochs_done: int) -> None:
        """Write ``state`` as the run's ``epoch_NNNN`` folder (complete before it takes its name), then prune."""
        if state is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.run_dir / epoch_dir_name(epochs_done)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=self.run_dir))
        write_checkpoint(staging, state)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        complete = [folder for folder in checkpoint_folders(self.run_dir) if incomplete_reason(folder) is None]
        for folder in complete[self.kept :]:
            shutil.rmtree(folder)
