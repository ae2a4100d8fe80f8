"""DSCL + PBSD (Xuan et al. 2023) and its SCL baseline: supervised contrast with a labelled MoCo queue.

The query (MoCo v2's strong view) is contrasted with the other queries, every key (a weaker view:
jitter without hue, no grayscale or blur) and the labelled queue. With PBSD the query view also
carries patches cut before its colour augmentation: the teacher of each patch is the online
encoder's last feature map RoI-aligned at the patch box (2×2, mean-pooled) through the projection
head; the student is the cropped patch through the whole online encoder. Total loss:
``dscl + λ · pbsd`` (SCL: ``scl + λ · pbsd``, PBSD off by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from pipeline.config import ExperimentConfig
from pipeline.data.recipes import ViewRecipe
from pipeline.losses import class_positive_count, dscl, pbsd, scl
from pipeline.methods.augmentations import DSCL_KEY, MOCO_V2, pbsd_query
from pipeline.methods.common import Encoder, full_precision
from pipeline.methods.context import Batch, StepInfo
from pipeline.methods.dscl.params import DsclConfig, SclConfig
from pipeline.methods.factory import register_method
from pipeline.methods.moco.method import MoCo
from pipeline.models.backbones import global_avg_pool
from pipeline.models.distributed import all_gather_with_grad

ROI_OUTPUT = 2


def patch_boxes_to_rois(boxes: torch.Tensor) -> torch.Tensor:
    """Return RoIAlign's ``[B*L, 5]`` rows ``(image index, x1, y1, x2, y2)`` for per-image boxes ``[B, L, 4]``."""
    batch, patches, _ = boxes.shape
    image_index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).repeat_interleave(patches)
    return torch.cat([image_index[:, None], boxes.reshape(batch * patches, 4)], dim=1)


def roi_patch_features(feature_map: torch.Tensor, boxes: torch.Tensor, total_stride: int) -> torch.Tensor:
    """Return each box's 2×2 RoIAlign of ``feature_map [B, C, h, w]``, mean-pooled ``# [B*L, C]`` (image-major).

    ``boxes [B, L, 4]`` are in input pixels; ``1 / total_stride`` maps them onto the feature map
    (``aligned=False``, as the official code).
    """
    # At least float32 boxes: in bf16 image indices above 256 and sub-pixel corners would be rounded.
    feature_map = full_precision(feature_map)
    rois = patch_boxes_to_rois(boxes.to(feature_map.dtype))
    pooled = roi_align(feature_map, rois, output_size=ROI_OUTPUT, spatial_scale=1.0 / total_stride, aligned=False)
    return pooled.mean(dim=(2, 3))


@register_method(SclConfig)
class Scl(MoCo):
    """SCL: the query against the other queries, all keys and the labelled queue, every positive weighted equally."""

    reads_feature_maps = "pools its queries from the last feature map, where PBSD cuts its RoI features"

    uses_labels = True
    # Its positives are built for the query alone: the common multi-crop form is not built for it yet.
    takes_local_crops = False
    params: SclConfig

    @classmethod
    def views(cls, config: ExperimentConfig) -> dict[str, ViewRecipe]:
        """Return MoCo v2's query (with PBSD's patches when enabled) and DSCL's weaker key view."""
        pbsd_config = config.method.pbsd
        if pbsd_config.enabled:
            query = pbsd_query(pbsd_config.num_patches, tuple(pbsd_config.scale))
        else:
            query = MOCO_V2
        return {"query": query, "key": DSCL_KEY}

    def compiled_networks(self) -> list[nn.Module]:
        """Return the online backbone's stages and head: ``forward`` calls them apart (``forward_map``, pooling)."""
        online: Encoder = self.online
        return [*online.backbone.stage_modules(), online.head]

    def supervised_loss(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        labels: torch.Tensor,
        queue: torch.Tensor,
        queue_labels: torch.Tensor,
        anchors: tuple[int, int] | None,
    ) -> torch.Tensor:
        """Return SCL's loss (every positive weighs 1 / (|P| + 1)) of the anchors among ``q``'s rows."""
        return scl(q, k, queue, labels, queue_labels, self.params.temperature, anchors)

    def forward(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        """Return the supervised contrastive loss (plus λ · PBSD) and the mean number of class positives."""
        params = self.params
        online: Encoder = self.online
        query_view = batch.views["query"]
        images = query_view["image"] if params.pbsd.enabled else query_view
        feature_map = online.backbone.forward_map(images)
        query = F.normalize(online.head(global_avg_pool(feature_map)), dim=1)
        key = self.encode_keys(batch.views["key"], step)
        queue, queue_labels = self.queue.embeddings, self.queue.labels
        all_keys, all_labels = self.stage_enqueue(key, batch.labels)
        if params.contrast_scope == "global":
            # This worker's queries are the anchors; every query and key of the global batch is an entry (gathered
            # with gradient), so the mean over workers is the loss of one worker holding the whole batch.
            queries, keys, labels = all_gather_with_grad(full_precision(query)), all_keys, all_labels
            anchors: tuple[int, int] | None = (self.context.rank * batch.size, (self.context.rank + 1) * batch.size)
        else:
            queries, keys, labels, anchors = full_precision(query), full_precision(key), batch.labels, None
        # The losses run in float32 outside autocast: T = 0.07 magnifies bf16's cosine error to 0.03 per logit.
        with torch.autocast(key.device.type, enabled=False):
            contrast = self.supervised_loss(queries, keys, labels, full_precision(queue), queue_labels, anchors)
        metrics = {
            "loss": contrast,
            self.name: contrast.detach(),
            "class_positives": class_positive_count(labels, queue_labels).float().mean(),
        }
        if params.pbsd.enabled:
            distillation = self.patch_distillation(feature_map, query_view, key)
            metrics["loss"] = contrast + params.pbsd.weight * distillation
            metrics["pbsd"] = distillation.detach()
        return metrics

    def patch_distillation(
        self, feature_map: torch.Tensor, query_view: dict[str, torch.Tensor], key: torch.Tensor
    ) -> torch.Tensor:
        """Return PBSD: RoI-aligned teacher patch features against the cropped patches' features (students)."""
        online: Encoder = self.online
        boxes, patches = query_view["boxes"], query_view["patches"]  # [B, L, 4], [B, L, 3, P, P]
        batch, count = boxes.shape[:2]
        with torch.no_grad():
            pooled = roi_patch_features(feature_map, boxes, online.backbone.total_stride)  # [B*L, C]
            teacher = F.normalize(online.head(pooled), dim=1)
        student = F.normalize(online(patches.flatten(0, 1)), dim=1)  # [B*L, D]
        # Image-major [B*L, D] rows become the loss's patch-major [L, B, D].
        teacher = full_precision(teacher.view(batch, count, -1).transpose(0, 1))
        student = full_precision(student.view(batch, count, -1).transpose(0, 1))
        with torch.autocast(key.device.type, enabled=False):
            queue = full_precision(self.queue.embeddings)
            return pbsd(teacher, student, full_precision(key), queue, self.params.temperature)


@register_method(DsclConfig)
class Dscl(Scl):
    """DSCL: the own key weighs alpha and the class positives share 1 - alpha; PBSD on by default."""

    def supervised_loss(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        labels: torch.Tensor,
        queue: torch.Tensor,
        queue_labels: torch.Tensor,
        anchors: tuple[int, int] | None,
    ) -> torch.Tensor:
        """Return DSCL's decoupled loss with this run's alpha, of the anchors among ``q``'s rows."""
        return dscl(q, k, queue, labels, queue_labels, self.params.alpha, self.params.temperature, anchors)
