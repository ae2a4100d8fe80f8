"""MoCo v2: InfoNCE between a query encoder and a momentum key encoder with a queue of negatives."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.losses import contrast_accuracy, contrast_logits, own_key_cross_entropy
from pipeline.methods.augmentations import MOCO_V2, local_views
from pipeline.methods.base import Method
from pipeline.methods.common import (
    build_encoder,
    full_precision,
    momentum_copy,
    momentum_update,
    scheduled_momentum,
)
from pipeline.methods.context import Batch, MethodContext, StepInfo
from pipeline.methods.factory import register_method
from pipeline.methods.moco.params import MocoConfig
from pipeline.models.distributed import concat_all_gather, shuffle_batch, unshuffle_batch
from pipeline.models.queue import LabelledQueue, check_divisible


@register_method(MocoConfig)
class MoCo(Method[MocoConfig]):
    """MoCo v2 with enqueue-after-loss, all-gathered keys and shuffle-BN or split-BN."""

    has_momentum_encoder = True
    takes_local_crops = True
    # Random labels for the queue's initial random keys; False starts them at -1 (unknown).
    random_queue_labels: ClassVar[bool] = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        config = context.config
        self.online = build_encoder(config.model, context.batch_norm, config.data.image_size)
        self.momentum_encoder = momentum_copy(self.online)
        queue_classes = context.num_classes if self.random_queue_labels else None
        self.queue = LabelledQueue(self.params.queue_size, config.model.proj_dim, num_classes=queue_classes)
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return MoCo v2's two views, ``query`` and ``key`` (the strong recipe), and any local crops ``local_i``."""
        return {"query": MOCO_V2, "key": MOCO_V2, **local_views(MOCO_V2, config.method.local_crops)}

    def local_queries(self, batch: Batch) -> list[torch.Tensor]:
        """Return the online encoder's normalised embeddings of the local crops ``# each [B, D]`` (none without)."""
        # One forward per crop: crops of different sides cannot share a batch.
        return [
            F.normalize(self.online(batch.views[f"local_{index}"]), dim=1)
            for index in range(self.params.num_local_crops)
        ]

    @classmethod
    def validate(cls, config: ExperimentConfig, world_size: int) -> None:
        """Reject a queue whose length is not a multiple of the global batch."""
        super().validate(config, world_size)
        check_divisible(config.method.queue_size, config.train.batch_size)

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the online backbone."""
        return {"backbone": self.online.backbone}

    def momentum_at(self, step: StepInfo) -> float:
        """Return the key encoder's momentum for this step."""
        return scheduled_momentum(
            self.params.momentum, self.params.momentum_schedule, step.global_step, step.total_steps
        )

    @torch.no_grad()
    def encode_keys(self, images: torch.Tensor, step: StepInfo) -> torch.Tensor:
        """Return normalised keys from the momentum encoder after its momentum update ``# [B, D]``."""
        momentum_update(self.online, self.momentum_encoder, self.momentum_at(step))
        # Shuffled keys land in other BN groups than their queries (across workers, or across the splits of
        # split-BN on one worker); otherwise batch statistics leak which key matches which query.
        if self.context.batch_norm in ("shuffle", "split"):
            shuffled, unshuffle_index = shuffle_batch(images)
            return unshuffle_batch(F.normalize(self.momentum_encoder(shuffled), dim=1), unshuffle_index)
        return F.normalize(self.momentum_encoder(images), dim=1)

    def stage_enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return this step's keys ``[W*B, D]`` and labels ``[W*B]`` from all workers, kept for ``on_step_end``."""
        self._pending = (concat_all_gather(full_precision(keys.detach())), concat_all_gather(labels))
        return self._pending

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the InfoNCE loss of the query view against its key and the queue."""
        query = F.normalize(self.online(batch.views["query"]), dim=1)
        key = self.encode_keys(batch.views["key"], step)
        queue = self.queue.embeddings.to(query.dtype)
        logits = contrast_logits(query, key.to(query.dtype), queue, self.params.temperature)
        loss = own_key_cross_entropy(logits)
        self.stage_enqueue(key, batch.labels)
        losses = {"info_nce": loss.detach(), "contrast_acc": contrast_accuracy(logits.detach())}
        locals_ = self.local_queries(batch)
        if locals_:
            # Multi-crop: every local crop is one more query of the same key and queue; the terms are summed.
            local = torch.stack(
                [
                    own_key_cross_entropy(contrast_logits(view, key.to(view.dtype), queue, self.params.temperature))
                    for view in locals_
                ]
            ).sum()
            losses["local_info_nce"] = local.detach()
            loss = loss + local
        return {"loss": loss, **losses}

    def on_step_end(self) -> None:
        """Enqueue the keys of the step just optimised (never negatives of their own step)."""
        if self._pending is not None:
            self.queue.enqueue(*self._pending)
            self._pending = None
