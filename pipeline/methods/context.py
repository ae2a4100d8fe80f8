"""What a method sees of the run: at construction, per batch, per step and at each epoch start."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.evaluation.monitor import extract_features, gather_by_index
from pipeline.models.distributed import broadcast_object

BATCH_NORM_MODES = ("plain", "split", "sync", "shuffle")


def resolve_batch_norm(mode: str, world_size: int, has_momentum_encoder: bool) -> str:
    """Return the concrete batch-norm mode (plain, split, sync, shuffle) for ``model.batch_norm``; reject misuse.

    ``auto``: split-BN with key shuffling on one worker and shuffle-BN across workers for methods with a
    momentum encoder (the official MoCo recipes), plain batch norm otherwise.
    """
    if mode == "auto":
        if not has_momentum_encoder:
            return "plain"
        return "shuffle" if world_size > 1 else "split"
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"model.batch_norm = {mode!r}; expected auto or one of {', '.join(BATCH_NORM_MODES)}")
    if mode == "shuffle" and not has_momentum_encoder:
        raise ValueError("model.batch_norm = 'shuffle' needs a method with a momentum encoder")
    return mode


@dataclass(frozen=True)
class MethodContext:
    """What a method knows about the run when it builds its networks."""

    config: ExperimentConfig
    rank: int
    world_size: int
    num_classes: int
    batch_norm: str


@dataclass(frozen=True)
class StepInfo:
    """Where the loop stands when it calls the method."""

    epoch: int
    global_step: int
    total_steps: int


@dataclass
class Batch:
    """One worker's batch: the declared views by name, labels ``[B]`` (-1: unlabelled) and dataset indices ``[B]``."""

    views: dict[str, Any]
    labels: torch.Tensor
    indices: torch.Tensor

    @property
    def size(self) -> int:
        """Return the number of images in the batch."""
        return int(self.labels.shape[0])


@dataclass
class EpochContext:
    """What a method gets before an epoch's first step: where it runs, the run's resources, the whole training set.

    ``train_images`` yields this worker's shard of the training set under the evaluation view as
    ``(images, labels, indices)``; ``extract_features`` and ``gather_by_index`` turn a pass over it
    into a tensor indexed by dataset position on every worker, and ``broadcast`` hands rank 0's
    result to all. State rebuilt here every epoch (e.g. prototypes) belongs in plain attributes,
    not in buffers, so it stays out of checkpoints.
    """

    epoch: int
    device: torch.device
    rank: int
    world_size: int
    num_train: int
    train_images: Iterable[Any]
    resources: dict[str, Any] = field(default_factory=dict)
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False

    def resource(self, name: str) -> Any:
        """Return the run-scoped resource (e.g. a Ray actor handle) the method declared as ``name``."""
        if name not in self.resources:
            known = ", ".join(sorted(self.resources)) or "none"
            raise KeyError(f"no run-scoped resource {name!r}; this run has: {known}")
        return self.resources[name]

    def extract_features(self, network: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this worker's L2-normalised features ``[n, D]`` of its training shard and their indices ``[n]``."""
        return extract_features(network, self.train_images, self.device, self.autocast_dtype, self.channels_last)

    def gather_by_index(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Return ``[num_train, ...]`` with every worker's ``values`` placed at their dataset ``indices``."""
        gathered = gather_by_index(values, indices, self.num_train)
        assert gathered is not None  # every rank receives without a destination
        return gathered

    def gather_to_rank0(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor | None:
        """Return ``gather_by_index``'s ``[num_train, ...]`` on rank 0 only (None elsewhere): one copy, not W."""
        return gather_by_index(values, indices, self.num_train, destination=0)

    def broadcast(self, value: Any) -> Any:
        """Return rank 0's ``value`` on every worker."""
        return broadcast_object(value, self.device if self.device.type == "cuda" else None)


@dataclass(frozen=True)
class ActorSpec:
    """A run-scoped Ray actor a method declares: created by the driver once per run, torn down when it ends.

    ``actor_class`` is a plain class (the driver wraps it with ``ray.remote``); it is built with
    ``args`` and ``kwargs`` and reserves ``num_cpus`` and ``num_gpus`` (fractions allowed).
    ``max_concurrency`` above one makes it a threaded actor (calls that wait do not block the others).
    """

    actor_class: type
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 0.0
    num_gpus: float = 0.0
    max_concurrency: int = 1


@dataclass
class EpochReport:
    """What a method reports about an epoch's preparation: metrics (logged with the epoch's), texts and pictures.

    ``artifacts`` maps an artifact path (e.g. ``hierarchy/epoch_0003.json``) to its text; ``pictures`` maps a
    PNG file name to its bytes, saved in the run folder's ``pictures/`` and logged there. Rank 0 records both.
    """

    metrics: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    pictures: dict[str, bytes] = field(default_factory=dict)
