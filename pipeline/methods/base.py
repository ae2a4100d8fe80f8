"""The interface every pretraining method implements; the training loop sees nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from pipeline.config import ExperimentConfig, MethodConfig


@dataclass(frozen=True)
class MethodContext:
    """What a method may know about the run when it builds its networks."""

    config: ExperimentConfig
    rank: int
    world_size: int
    num_classes: int
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        """Return the number of optimiser steps of the whole run."""
        return self.steps_per_epoch * self.config.train.epochs

    @property
    def local_batch_size(self) -> int:
        """Return the batch size of one worker."""
        return self.config.train.batch_size // self.world_size


@dataclass(frozen=True)
class StepInfo:
    """Where the loop stands when it calls the method."""

    epoch: int
    global_step: int
    total_steps: int


class Method(nn.Module, ABC):
    """A pretraining method: its networks, the views it needs and its losses for a batch.

    ``forward`` runs inside DDP and returns a dict of scalar losses whose ``"loss"`` entry is
    optimised; the other entries are logged. State that must survive a restart (queues,
    momentum networks) lives in buffers or submodules so that ``state_dict`` holds it.
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    has_momentum_encoder: ClassVar[bool] = False

    def __init__(self, context: MethodContext) -> None:
        super().__init__()
        self.context = context
        self.params: Any = context.config.method

    @classmethod
    @abstractmethod
    def train_transform(cls, config: ExperimentConfig) -> Callable[[Any], Any]:
        """Return the transform mapping one training image to the views ``forward`` expects."""

    @classmethod
    def validate(cls, config: ExperimentConfig, world_size: int) -> None:
        """Raise ValueError naming the key if ``config`` cannot run with this method."""

    @classmethod
    def shared_handles(cls, config: ExperimentConfig, run_name: str) -> dict[str, Any]:
        """Return run-wide objects (e.g. Ray actor handles) created once by the driver."""
        return {}

    @abstractmethod
    def forward(self, views: Any, labels: torch.Tensor, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the losses of one batch; ``"loss"`` is the one optimised."""

    @abstractmethod
    def eval_backbone(self) -> nn.Module:
        """Return the network whose pooled features the kNN monitor and linear probe use."""

    def on_epoch_start(self, epoch: int, handles: dict[str, Any]) -> None:
        """Receive the epoch number and the run's shared handles before the epoch's first step."""

    def on_step_end(self) -> None:
        """Update state that must change only after the optimiser step (e.g. enqueue keys)."""
