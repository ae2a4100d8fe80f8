"""ASCL (Feng & Patras 2022): MoCo with adaptive soft targets from the weak key's relations, and its BYOL variant.

Both log, as epoch means, how the soft targets behave: the confidence ``c``, the weight the target
rows leave on the own key, and (on labelled data) the fraction of each key's top neighbours that
share its class, the quantity that says whether the extra positives are right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.losses import (
    contrast_accuracy,
    contrast_logits,
    in_batch_targets,
    neighbour_relations,
    off_diagonal,
    soft_byol,
    soft_cross_entropy,
    soft_targets,
)
from pipeline.methods.ascl.params import AsclByolConfig, AsclConfig
from pipeline.methods.augmentations import ASCL_WEAK, MOCO_V2, local_views
from pipeline.methods.base import Method
from pipeline.methods.common import (
    build_encoder,
    full_precision,
    momentum_copy,
    momentum_update,
    scheduled_momentum,
)
from pipeline.methods.context import Batch, MethodContext, StepInfo, resolve_batch_norm
from pipeline.methods.factory import register_method
from pipeline.methods.moco.method import MoCo
from pipeline.models.distributed import all_gather_with_grad, concat_all_gather
from pipeline.models.heads import PredictionHead


def key_recipe(key_augmentation: str) -> ViewRecipe:
    """Return the momentum branch's view: ASCL's weak crop-and-flip, or MoCo v2's strong recipe."""
    return ASCL_WEAK if key_augmentation == "weak" else MOCO_V2


def neighbour_agreement(
    relations: torch.Tensor, labels: torch.Tensor, reference_labels: torch.Tensor, count: int
) -> torch.Tensor:
    """Return the fraction of the top-``count`` neighbours by ``relations [B, n]`` that share their anchor's label.

    ``reference_labels`` are the neighbours' labels, ``[n]`` shared by every row or ``[B, n]`` per row.
    Only pairs whose anchor and neighbour labels are both known (>= 0) count; 0 when there is none.
    """
    if reference_labels.dim() == 1:
        reference_labels = reference_labels[None, :].expand(relations.shape[0], -1)
    neighbours = reference_labels.gather(1, relations.topk(count, dim=1).indices)  # [B, count]
    known = (labels[:, None] >= 0) & (neighbours >= 0)
    agree = (neighbours == labels[:, None]) & known
    return agree.sum().float() / known.sum().clamp_min(1).float()


def target_class_precision(targets: torch.Tensor, labels: torch.Tensor, queue_labels: torch.Tensor) -> torch.Tensor:
    """Return the share of the target weight on queue entries ``targets[:, 1:]`` that lies on the anchor's class.

    Unlike ``neighbour_agreement`` it weighs every entry by its target, so it also judges ``ascl`` mode,
    which spreads weight over the whole queue. Entries or anchors with unknown labels count as wrong.
    """
    same = (queue_labels[None, :] == labels[:, None]) & (labels[:, None] >= 0)  # [B, K]
    queue_weight = targets[:, 1:]
    return (queue_weight * same).sum() / queue_weight.sum().clamp_min(torch.finfo(targets.dtype).tiny)


@register_method(AsclConfig)
class Ascl(MoCo):
    """ASCL on MoCo v2: strong query, weak key; soft targets over ``[own key, queue]`` (modes hard, ahcl, ascl)."""

    random_queue_labels = False

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return the strong ``query`` view, the ``key`` view (weak by default) and any local crops ``local_i``."""
        key = key_recipe(config.method.key_augmentation)
        return {"query": MOCO_V2, "key": key, **local_views(MOCO_V2, config.method.local_crops)}

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the soft InfoNCE loss and the soft targets' statistics."""
        params = self.params
        query = F.normalize(self.online(batch.views["query"]), dim=1)
        key = self.encode_keys(batch.views["key"], step)
        queue = self.queue.embeddings
        # Targets and the soft cross-entropy run in float32 outside autocast: the entropy of a 4096-way
        # softmax and targets of 1/(K+1) need the precision. The logits' matmul stays MoCo's.
        logits = contrast_logits(query, key.to(query.dtype), queue.to(query.dtype), params.temperature)
        # Multi-crop: each local crop is one more query with the same soft targets (they come from the key).
        local_logits = [
            contrast_logits(view, key.to(view.dtype), queue.to(view.dtype), params.temperature)
            for view in self.local_queries(batch)
        ]
        with torch.autocast(key.device.type, enabled=False):
            relations = neighbour_relations(full_precision(key), full_precision(queue), params.sharpen_temperature)
            targets, confidence = soft_targets(relations, params.mode, params.num_neighbors)  # [B, 1+K], [B]
            loss = soft_cross_entropy(full_precision(logits), targets)
            local = [soft_cross_entropy(full_precision(view_logits), targets) for view_logits in local_logits]
        self.stage_enqueue(key, batch.labels)
        metrics = {
            "loss": loss + torch.stack(local).sum() if local else loss,
            "soft_info_nce": loss.detach(),
            "contrast_acc": contrast_accuracy(logits.detach()),
            "confidence": confidence.mean(),
            "own_key_weight": targets[:, 0].mean(),
        }
        if local:
            metrics["local_soft_info_nce"] = torch.stack(local).sum().detach()
        if self.context.num_classes > 1:
            count = max(params.num_neighbors, 1)
            metrics["neighbour_agreement"] = neighbour_agreement(relations, batch.labels, self.queue.labels, count)
            if params.num_neighbors > 0:
                metrics["target_class_precision"] = target_class_precision(targets, batch.labels, self.queue.labels)
        return metrics


@register_method(AsclByolConfig)
class AsclByol(Method[AsclByolConfig]):
    """ASCL's BYOL variant: online encoder + predictor on the strong view, momentum target on the weak view."""

    has_momentum_encoder = True

    def __init__(self, context: MethodContext) -> None:
        super().__init__(context)
        config = context.config
        self.online = build_encoder(config.model, context.batch_norm, config.data.image_size)
        dim = config.model.proj_dim
        self.predictor = PredictionHead(dim, self.params.predictor_hidden_dim, dim)
        self.momentum_encoder = momentum_copy(self.online)

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return the strong ``query`` view and the ``key`` view (weak by default)."""
        return {"query": MOCO_V2, "key": key_recipe(config.method.key_augmentation)}

    @classmethod
    def batch_norm(cls, config: ExperimentConfig, world_size: int) -> str:
        """Return ``auto``'s split-BN on one worker, SyncBN across GPU workers, per-worker BN across CPU workers.

        Keys are never shuffled (the official BYOL variant does not), so shuffle-BN is rejected.
        """
        mode = config.model.batch_norm
        if mode == "auto":
            if world_size == 1:
                return "split"
            return "sync" if config.ray.gpus_per_worker > 0 else "plain"
        if mode == "shuffle":
            raise ValueError("model.batch_norm = 'shuffle': ascl_byol does not shuffle keys; use auto, sync or plain")
        return resolve_batch_norm(mode, world_size, has_momentum_encoder=True)

    @classmethod
    def validate(cls, config: ExperimentConfig, world_size: int) -> None:
        """Reject a global batch too small for in-batch relations (at least 3 images when num_neighbors > 0)."""
        super().validate(config, world_size)
        if config.method.num_neighbors > 0 and config.train.batch_size < 3:
            raise ValueError(
                f"train.batch_size = {config.train.batch_size}: ascl_byol's in-batch targets need at least 3 images"
            )

    def evaluation_networks(self) -> dict[str, nn.Module]:
        """Return the online backbone."""
        return {"backbone": self.online.backbone}

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the soft BYOL loss of the predicted strong view against the soft targets of the global batch's keys.

        Predictions ``[W*B, D]`` (differentiable), keys and labels are gathered from every worker, so the
        in-batch targets relate each key to every other key of the global batch.
        """
        params = self.params
        prediction = all_gather_with_grad(
            full_precision(F.normalize(self.predictor(self.online(batch.views["query"])), dim=1))
        )
        with torch.no_grad():
            momentum = scheduled_momentum(params.momentum, params.momentum_schedule, step.global_step, step.total_steps)
            momentum_update(self.online, self.momentum_encoder, momentum)
            key = concat_all_gather(full_precision(F.normalize(self.momentum_encoder(batch.views["key"]), dim=1)))
        labels = concat_all_gather(batch.labels)
        size = labels.shape[0]
        with torch.autocast(key.device.type, enabled=False):
            targets, confidence = in_batch_targets(key, params.num_neighbors, params.sharpen_temperature)
            loss = soft_byol(prediction, key, targets)
        metrics = {
            "loss": loss,
            "soft_byol": loss.detach(),
            "confidence": confidence.mean(),
            "own_key_weight": targets.diagonal().mean(),
        }
        if self.context.num_classes > 1 and size > 1:
            with torch.autocast(key.device.type, enabled=False):
                # Ranking needs no sharpening: the plain similarities to every other key of the batch.
                relations = off_diagonal(key @ key.T)  # [W*B, W*B-1]
            other_labels = off_diagonal(labels[None, :].expand(size, -1))  # [W*B, W*B-1]
            count = min(max(params.num_neighbors, 1), size - 1)
            metrics["neighbour_agreement"] = neighbour_agreement(relations, labels, other_labels, count)
        return metrics
