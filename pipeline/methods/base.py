"""The interface every pretraining method implements; the training loop sees nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Generic, TypeVar, cast

import torch
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.data.views import MultiView, build_views
from pipeline.methods.context import (
    ActorSpec,
    Batch,
    EpochContext,
    EpochReport,
    MethodContext,
    StepInfo,
    resolve_batch_norm,
)
from pipeline.methods.registry import MethodConfig
from pipeline.models.backbones import check_timm_backbone

ParamsT = TypeVar("ParamsT", bound=MethodConfig)


class Method(nn.Module, ABC, Generic[ParamsT]):
    """A pretraining method: its networks, the views it needs and its losses for a batch.

    ``forward`` runs inside DDP and returns a dict of scalar losses whose ``"loss"`` entry is
    optimised; the other entries are logged as epoch means. State that must survive a restart
    (queues, momentum networks) lives in buffers or submodules so that ``state_dict`` holds it.
    """

    name: ClassVar[str]
    has_momentum_encoder: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = False
    # What the method reads from the backbone besides pooled features, if anything: a timm backbone gives
    # pooled features only, so such a method needs a built-in ResNet.
    reads_feature_maps: ClassVar[str | None] = None
    # Whether ``forward`` uses multi-crop's local views (``method.local_crops``) when the parameters declare some.
    takes_local_crops: ClassVar[bool] = False
    params: ParamsT

    def __init__(self, context: MethodContext) -> None:
        super().__init__()
        self.context = context
        self.params = cast(ParamsT, context.config.method)

    @classmethod
    @abstractmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return the views ``forward`` receives in ``batch.views``, by name, as declarative recipes."""

    @classmethod
    def train_transform(cls, config: ExperimentConfig) -> MultiView:
        """Return the per-image transform producing every declared view."""
        return build_views(cls.views(config), config.data)

    @classmethod
    def batch_norm(cls, config: ExperimentConfig, world_size: int) -> str:
        """Return this method's concrete batch-norm mode on ``world_size`` workers (the one place it is decided)."""
        return resolve_batch_norm(config.model.batch_norm, world_size, cls.has_momentum_encoder)

    @classmethod
    def validate(cls, config: ExperimentConfig, world_size: int) -> None:
        """Raise ValueError naming the key if ``config`` cannot run with this method on ``world_size`` workers."""
        if getattr(config.method, "local_crops", None) and not cls.takes_local_crops:
            raise ValueError(
                f"method.local_crops: {cls.name} does not use local crops (used by moco, ascl, hcsc, supcon, simclr)"
            )
        batch_norm = cls.batch_norm(config, world_size)
        if config.model.uses_timm:
            if cls.reads_feature_maps is not None:
                raise ValueError(
                    f"model.backbone = {config.model.backbone!r}: {cls.name} {cls.reads_feature_maps}, which only the "
                    "built-in ResNets expose (model.backbone: resnet18, resnet34 or resnet50)"
                )
            check_timm_backbone(config.model, config.data.image_size, "split" if batch_norm == "split" else "plain")
        if batch_norm == "sync" and world_size > 1 and config.ray.gpus_per_worker == 0:
            raise ValueError(
                "model.batch_norm = 'sync' needs GPU workers (PyTorch's SyncBatchNorm under DDP runs on CUDA only); "
                "set ray.gpus_per_worker or choose another model.batch_norm"
            )

    @classmethod
    def validate_data(cls, config: ExperimentConfig, num_train: int) -> None:
        """Raise ValueError naming the key if ``config`` cannot run on a training set of ``num_train`` images."""

    @classmethod
    def resources(cls, config: ExperimentConfig) -> dict[str, ActorSpec]:
        """Return the run-scoped actors this method needs, by name (none by default)."""
        return {}

    @abstractmethod
    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the losses of one batch; ``"loss"`` is the one optimised."""

    @abstractmethod
    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the networks whose pooled features are evaluated, by name; ``"backbone"`` comes first.

        Each maps images ``[B, 3, H, W]`` to features ``[B, feature_dim]`` and has a ``feature_dim`` attribute
        (the online probe's head is sized from the backbone's).
        """

    def compiled_networks(self) -> list[nn.Module]:
        """Return the sub-networks ``train.compile`` compiles in place: by default every trainable direct child.

        Containers (ModuleDict, ModuleList) are opened; frozen children (momentum encoders) and children
        without parameters (queues) stay eager. Each returned module must be called (``module(x)``, not one
        of its other methods) by ``forward``, or compiling it changes nothing: a method that calls e.g.
        ``backbone.forward_stages`` returns the modules that call reaches instead.
        """
        networks: list[nn.Module] = []
        for child in self.children():
            if isinstance(child, nn.ModuleDict):
                parts = list(child.values())
            else:
                parts = list(child) if isinstance(child, nn.ModuleList) else [child]
            networks += [part for part in parts if any(weight.requires_grad for weight in part.parameters())]
        return networks

    def on_epoch_start(self, context: EpochContext) -> None:
        """Prepare for an epoch (e.g. rebuild prototypes) before its first step."""

    def epoch_report(self) -> EpochReport:
        """Return the metrics and artifacts of the last ``on_epoch_start`` (nothing by default)."""
        return EpochReport()

    def on_step_end(self) -> None:
        """Update state that must change only after the optimiser step (e.g. enqueue keys)."""
