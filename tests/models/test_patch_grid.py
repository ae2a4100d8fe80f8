"""The patch grid (order, overlap, sizes), the patch-grid encoder, the causal context network and layer norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.data.recipes import grid_patch_size
from pipeline.models.backbones import build_backbone
from pipeline.models.causal import CausalContext
from pipeline.models.patch_grid import PatchGridEncoder, cut_grid


@pytest.mark.parametrize(("image_size", "grid", "side"), [(32, 7, 8), (64, 7, 16), (224, 7, 56), (24, 5, 8)])
def test_patch_side_gives_half_overlapping_grids_that_cover_the_image(image_size: int, grid: int, side: int) -> None:
    assert grid_patch_size(image_size, grid) == side
    assert (grid - 1) * side // 2 + side == image_size


def test_sizes_that_do_not_divide_are_refused() -> None:
    with pytest.raises(ValueError, match=r"7x7 patch grid .* 2 \* 30 / 8, got 7.5"):
        grid_patch_size(30, 7)
    with pytest.raises(ValueError, match=r"2 \* 36 / 8, got 9"):
        grid_patch_size(36, 7)  # side 9: odd, no whole stride


def test_cut_grid_orders_patches_row_by_row_with_half_overlap() -> None:
    images = torch.randn(2, 3, 32, 32)
    patches = cut_grid(images, 7)
    assert patches.shape == (2, 49, 3, 8, 8)
    for r in range(7):
        for c in range(7):
            assert torch.equal(patches[:, r * 7 + c], images[:, :, 4 * r : 4 * r + 8, 4 * c : 4 * c + 8])


def test_cut_grid_refuses_non_square_images() -> None:
    with pytest.raises(ValueError, match="square"):
        cut_grid(torch.randn(1, 3, 32, 16), 7)


def test_encoder_features_are_the_mean_of_independent_patch_vectors() -> None:
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(backbone="resnet18", cifar_stem=True, width=4), norm="layer").eval()
    encoder = PatchGridEncoder(backbone, 7)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        vectors = encoder.patch_vectors(cut_grid(images, 7))
        features = encoder(images)
        single = backbone(images[:, :, 4:12, 8:16])  # row 1, column 2
    assert vectors.shape == (2, 7, 7, 32) and features.shape == (2, 32)
    torch.testing.assert_close(features, vectors.mean(dim=(1, 2)))
    torch.testing.assert_close(vectors[:, 1, 2], single)


def test_layer_norm_backbone_has_no_batch_norm_and_no_dependence_between_samples() -> None:
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(backbone="resnet18", cifar_stem=True, width=4), norm="layer").train()
    assert not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in backbone.modules())
    images = torch.randn(4, 3, 8, 8)
    others = images.clone()
    others[1:] = torch.randn(3, 3, 8, 8)
    # In training mode batch norm would mix the batch; layer norm keeps each patch on its own.
    torch.testing.assert_close(backbone(images)[0], backbone(others)[0])


@pytest.mark.parametrize("row", range(5))
def test_context_at_row_r_depends_on_rows_at_or_above_r_only(row: int) -> None:
    torch.manual_seed(0)
    network = CausalContext(in_channels=6, channels=8, num_blocks=3)
    grid = torch.randn(2, 6, 5, 5)
    perturbed = grid.clone()
    perturbed[:, :, row] += torch.randn(2, 6, 5)
    with torch.no_grad():
        before, after = network(grid), network(perturbed)
    assert torch.equal(before[:, :, :row], after[:, :, :row])
    assert not torch.allclose(before[:, :, row], after[:, :, row])


def test_context_gradient_from_one_row_reaches_no_row_below() -> None:
    torch.manual_seed(0)
    network = CausalContext(in_channels=4, channels=4, num_blocks=4, kernel_size=3)
    grid = torch.randn(1, 4, 6, 6, requires_grad=True)
    network(grid)[:, :, 2].sum().backward()
    per_row = grid.grad.abs().sum(dim=(0, 1, 3))
    assert torch.all(per_row[3:] == 0) and torch.all(per_row[:3] > 0)


def test_context_kernel_must_be_odd() -> None:
    with pytest.raises(ValueError, match="odd"):
        CausalContext(4, 4, 1, kernel_size=2)
