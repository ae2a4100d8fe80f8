"""DSCL + PBSD and SCL methods: views, RoIAlign teacher boxes, losses against the pure functions, gradients."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from pipeline.losses import dscl, pbsd, scl
from pipeline.methods import Batch, StepInfo
from pipeline.methods.augmentations import DSCL_KEY, MOCO_V2
from pipeline.methods.dscl.method import patch_boxes_to_rois, roi_patch_features
from pipeline.models.backbones import global_avg_pool
from tests.support.methods import make_method

LABELS = torch.tensor([0, 1, 0, 2, 1, 0])


def make(method: str, **overrides: object):
    """Return a tiny method on one worker (3 classes, batch 6, queue 12) with plain batch norm."""
    values: dict[str, object] = {"model.batch_norm": "plain", "method.queue_size": 12}
    values.update(overrides)
    return make_method(method, num_classes=3, batch_size=6, **values)


def batch_of(method) -> Batch:
    """Return the method's own views of six random 16 px images, collated."""
    transform = method.train_transform(method.context.config)
    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(6)]
    torch.manual_seed(0)
    return Batch(default_collate([transform(image) for image in images]), LABELS, torch.arange(6))


def test_roi_align_teacher_reads_the_cells_under_each_box() -> None:
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    linear = 10 * rows + cols  # bilinear sampling of a linear map returns the linear function itself
    feature_map = torch.stack([linear, 100 + linear])[:, None]  # [B=2, C=1, 4, 4], e.g. a 32 px image at stride 8
    boxes = torch.tensor([[[8.0, 8.0, 24.0, 24.0]], [[0.0, 16.0, 16.0, 32.0]]])  # [B, L=1, 4] as (x1, y1, x2, y2)
    features = roi_patch_features(feature_map, boxes, total_stride=8)
    # Box centres on the map (aligned=False: pixel / stride): image 0 (2, 2); image 1 x = 1, y = 3, whose
    # lower sample row (y = 3.5) is clamped to the last row 3.
    assert features.shape == (2, 1)
    torch.testing.assert_close(features[0], torch.tensor([22.0]))
    torch.testing.assert_close(features[1], torch.tensor([100 + 10 * 2.75 + 1.0]))
    rois = patch_boxes_to_rois(torch.zeros(2, 3, 4))
    assert rois[:, 0].tolist() == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("name", ["scl", "dscl"])
def test_views_are_strong_query_and_weaker_key(name: str) -> None:
    method = make(name, **{"method.pbsd.enabled": False})
    assert method.views(method.context.config) == {"query": MOCO_V2, "key": DSCL_KEY}
    patched = make(name, **{"method.pbsd.enabled": True, "method.pbsd.num_patches": 3})
    query = patched.views(patched.context.config)["query"]
    assert query.patches is not None and query.patches.count == 3


@pytest.mark.parametrize("name", ["scl", "dscl"])
def test_loss_is_the_pure_function_plus_weighted_pbsd(name: str) -> None:
    method = make(name, **{"method.pbsd.enabled": True, "method.pbsd.weight": 0.5, "method.momentum": 1.0})
    method.eval()
    batch = batch_of(method)
    queue, queue_labels = method.queue.embeddings.clone(), method.queue.labels.clone()
    with torch.no_grad():
        losses = method(batch, StepInfo(0, 0, 10))
        view = batch.views["query"]
        feature_map = method.online.backbone.forward_map(view["image"])
        query = F.normalize(method.online.head(global_avg_pool(feature_map)), dim=1)
        key = F.normalize(method.momentum_encoder(batch.views["key"]), dim=1)
        if name == "dscl":
            contrast = dscl(query, key, queue, LABELS, queue_labels, 1 / 9, 0.07)
        else:
            contrast = scl(query, key, queue, LABELS, queue_labels, 0.07)
        teacher = F.normalize(method.online.head(roi_patch_features(feature_map, view["boxes"], 8)), dim=1)
        student = F.normalize(method.online(view["patches"].flatten(0, 1)), dim=1)
        count = view["boxes"].shape[1]
        distillation = pbsd(
            teacher.view(6, count, -1).transpose(0, 1), student.view(6, count, -1).transpose(0, 1), key, queue, 0.07
        )
    torch.testing.assert_close(losses[name], contrast)
    torch.testing.assert_close(losses["pbsd"], distillation)
    torch.testing.assert_close(losses["loss"], contrast + 0.5 * distillation)


def test_dscl_trains_the_online_encoder_and_fills_the_labelled_queue() -> None:
    method = make("dscl")
    batch = batch_of(method)
    losses = method(batch, StepInfo(0, 0, 10))
    assert set(losses) == {"loss", "dscl", "pbsd", "class_positives"}
    losses["loss"].backward()
    assert all(p.grad is None for p in method.momentum_encoder.parameters())
    assert all(p.grad is not None for p in method.online.parameters())
    method.on_step_end()
    assert torch.equal(method.queue.labels[:6], LABELS)


def test_pbsd_off_skips_patches_and_keeps_the_loss_supervised_only() -> None:
    method = make("dscl", **{"method.pbsd.enabled": False})
    losses = method(batch_of(method), StepInfo(0, 0, 10))
    assert "pbsd" not in losses
    torch.testing.assert_close(losses["loss"].detach(), losses["dscl"])


def test_losses_stay_float32_under_bf16_autocast() -> None:
    method = make("dscl")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = method(batch_of(method), StepInfo(0, 0, 10))
    assert losses["dscl"].dtype == losses["pbsd"].dtype == torch.float32
