"""Tests of the view recipes and their torchvision executor: shapes, normalisation, blur, patches, grids, collation."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from pipeline.config import DataConfig
from pipeline.data.recipes import (
    EVAL_VIEW,
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    Patches,
    PatchGrid,
    RandomResizedCrop,
    ResizeCenterCrop,
    ViewRecipe,
)
from pipeline.data.views import (
    IMAGENET_NORMALIZATION,
    MultiView,
    PatchGridView,
    PatchView,
    blur_enabled,
    blur_kernel_size,
    build_view,
    build_views,
    default_patch_size,
    grid_cells,
    normalization,
)
from pipeline.models.patch_grid import cut_grid

COLOUR = (ColorJitter(), Grayscale(), GaussianBlur())
STRONG = ViewRecipe((RandomResizedCrop(), *COLOUR, HorizontalFlip()))
WEAK = ViewRecipe((RandomResizedCrop(), HorizontalFlip()))
NO_HUE = ViewRecipe((RandomResizedCrop(), HorizontalFlip(), ColorJitter(hue=0.0)))
LIGHT = ViewRecipe((RandomResizedCrop(), HorizontalFlip(), ColorJitter(), Grayscale()))
PLAIN_RECIPES = {"strong": STRONG, "weak": WEAK, "no_hue": NO_HUE, "light": LIGHT, "eval": EVAL_VIEW}


def with_patches(count: int = 5, scale: tuple[float, float] = (0.05, 0.6), size: int | None = None) -> ViewRecipe:
    """Return a strong view with patches cut before its colour steps and given the same colour steps."""
    return ViewRecipe(
        (RandomResizedCrop(), HorizontalFlip(), *COLOUR), patches=Patches(count, scale, size=size, steps=COLOUR)
    )


def random_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """Return a uniformly random RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def transform_types(transform: object) -> list[type]:
    """Return the types of every transform nested inside Compose / RandomApply containers."""
    found = [type(transform)]
    for child in getattr(transform, "transforms", []):
        found += transform_types(child)
    return found


@pytest.mark.parametrize(
    ("source", "mean", "std"),
    [
        ("cifar10", [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
        ("cifar100", [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
        ("synthetic", [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
        ("image_folder", list(IMAGENET_NORMALIZATION[0]), list(IMAGENET_NORMALIZATION[1])),
        ("stl10", [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ],
)
def test_normalization_defaults_per_source(source: str, mean: list[float], std: list[float]) -> None:
    assert normalization(DataConfig(source=source)) == (mean, std)


def test_normalization_config_values_win() -> None:
    cfg = DataConfig(source="cifar10", mean=[0.1, 0.2, 0.3], std=[0.4, 0.5, 0.6])
    assert normalization(cfg) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6])


@pytest.mark.parametrize(("size", "blur", "expected"), [(32, None, False), (63, None, False), (64, None, True)])
def test_blur_auto_rule(size: int, blur: bool | None, expected: bool) -> None:
    cfg = DataConfig(image_size=size, blur=blur)
    assert blur_enabled(cfg) is expected
    assert (v2.GaussianBlur in transform_types(build_view(STRONG, cfg))) is expected


@pytest.mark.parametrize(("size", "blur"), [(32, True), (224, False)])
def test_blur_config_overrides_rule(size: int, blur: bool) -> None:
    cfg = DataConfig(image_size=size, blur=blur)
    assert blur_enabled(cfg) is blur
    assert (v2.GaussianBlur in transform_types(build_view(STRONG, cfg))) is blur
    assert (v2.GaussianBlur in transform_types(build_view(with_patches(), cfg).patch_colour)) is blur


@pytest.mark.parametrize(("size", "kernel"), [(32, 3), (64, 7), (96, 9), (224, 23)])
def test_blur_kernel_is_odd_tenth_of_size(size: int, kernel: int) -> None:
    assert blur_kernel_size(size) == kernel


@pytest.mark.parametrize("kind", ["weak", "no_hue", "light", "eval"])
def test_only_recipes_with_a_blur_step_blur(kind: str) -> None:
    assert v2.GaussianBlur not in transform_types(build_view(PLAIN_RECIPES[kind], DataConfig(image_size=224)))


def test_jitter_without_hue_and_without_grayscale() -> None:
    view = build_view(NO_HUE, DataConfig(image_size=64))
    jitters = [t for t in view.transforms if isinstance(t, v2.RandomApply)]
    assert v2.RandomGrayscale not in transform_types(view)
    assert len(jitters) == 1 and jitters[0].p == 0.8
    assert jitters[0].transforms[0].hue is None


@pytest.mark.parametrize("size", [32, 64, 224])
@pytest.mark.parametrize("kind", sorted(PLAIN_RECIPES))
def test_plain_view_shape_and_dtype(kind: str, size: int) -> None:
    torch.manual_seed(0)
    out = build_view(PLAIN_RECIPES[kind], DataConfig(image_size=size))(random_image(size + size // 4, size))
    assert type(out) is torch.Tensor
    assert out.shape == (3, size, size)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("size", [32, 64, 224])
def test_query_patches_shapes_and_dtypes(size: int) -> None:
    torch.manual_seed(0)
    out = build_view(with_patches(), DataConfig(image_size=size))(random_image(size, size + size // 4))
    patch = default_patch_size(size)
    assert set(out) == {"image", "patches", "boxes"}
    assert out["image"].shape == (3, size, size)
    assert out["patches"].shape == (5, 3, patch, patch)
    assert out["boxes"].shape == (5, 4)
    assert all(value.dtype == torch.float32 for value in out.values())


@pytest.mark.parametrize(("size", "patch"), [(16, 8), (32, 9), (64, 18), (224, 64)])
def test_default_patch_size_scales_with_image(size: int, patch: int) -> None:
    assert default_patch_size(size) == patch


def normalised(pixels: np.ndarray, cfg: DataConfig) -> torch.Tensor:
    """Return the reference normalisation of uint8 [H, W, 3] pixels as a [3, H, W] tensor."""
    mean, std = normalization(cfg)
    scaled = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
    return (scaled - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def test_eval_view_is_identity_at_32_px() -> None:
    cfg = DataConfig(source="cifar10", image_size=32)
    image = random_image(32, 32)
    torch.testing.assert_close(build_view(EVAL_VIEW, cfg)(image), normalised(np.asarray(image), cfg))


def test_eval_view_centre_crops_224_of_256() -> None:
    cfg = DataConfig(source="image_folder", image_size=224)
    image = random_image(256, 256)
    expected = normalised(np.asarray(image)[16:240, 16:240], cfg)
    torch.testing.assert_close(build_view(EVAL_VIEW, cfg)(image), expected)


def test_eval_view_resizes_shorter_side_to_256_over_224() -> None:
    out = build_view(EVAL_VIEW, DataConfig(image_size=112))(random_image(256, 128))
    assert out.shape == (3, 112, 112)
    assert build_view(EVAL_VIEW, DataConfig(image_size=112)).transforms[0].size == [128]


def test_patch_boxes_inside_frame_with_requested_area() -> None:
    torch.manual_seed(0)
    size, low, high = 224, 0.05, 0.6
    view = PatchView(with_patches(4000, (low, high)), DataConfig(image_size=size))
    boxes = view.sample_boxes()
    left, top, right, bottom = boxes.unbind(dim=1)
    assert torch.equal(boxes, boxes.round())
    assert (left >= 0).all() and (top >= 0).all() and (right <= size).all() and (bottom <= size).all()
    width, height = right - left, bottom - top
    assert (width >= 1).all() and (height >= 1).all()
    # Rounding each side moves the area by at most half the perimeter plus a quarter pixel.
    slack = (width + height) / 2 + 1
    area = width * height
    assert (area >= low * size**2 - slack).all() and (area <= high * size**2 + slack).all()
    fraction = area / size**2
    assert fraction.min() < low + 0.01 and fraction.max() > high - 0.01
    assert abs(fraction.mean().item() - (low + high) / 2) < 0.01
    ratio = width / height
    assert (ratio > 3 / 4 - 0.05).all() and (ratio < 4 / 3 + 0.05).all()


def test_patch_boxes_that_do_not_fit_are_clipped_to_frame() -> None:
    torch.manual_seed(0)
    size = 32
    boxes = PatchView(with_patches(500, (0.95, 1.0)), DataConfig(image_size=size)).sample_boxes()
    assert (boxes >= 0).all() and (boxes <= size).all()
    assert (boxes[:, 2] - boxes[:, 0] == size).any() or (boxes[:, 3] - boxes[:, 1] == size).any()


def test_patch_crop_is_the_box_region_of_the_geometry_image() -> None:
    view = PatchView(with_patches(size=12), DataConfig(image_size=64))
    image = random_image(64, 64, seed=1)
    pixels = np.asarray(image)
    boxes = torch.tensor([[5.0, 30.0, 17.0, 42.0], [40.0, 2.0, 52.0, 14.0]])  # 12 x 12: no resampling
    patches = view.crop_patches(image, boxes)
    np.testing.assert_array_equal(np.asarray(patches[0]), pixels[30:42, 5:17])
    np.testing.assert_array_equal(np.asarray(patches[1]), pixels[2:14, 40:52])


def test_resized_patch_crop_matches_pil_crop_and_resize() -> None:
    view = PatchView(with_patches(size=12), DataConfig(image_size=64))
    image = random_image(64, 64, seed=2)
    patch = view.crop_patches(image, torch.tensor([[3.0, 20.0, 43.0, 50.0]]))[0]
    expected = image.crop((3, 20, 43, 50)).resize((12, 12), PIL.Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(patch).astype(int) - np.asarray(expected).astype(int)).max() <= 1


def test_patches_come_from_one_image_before_colour_augmentation() -> None:
    torch.manual_seed(0)
    image = PIL.Image.new("RGB", (48, 40), (200, 40, 90))
    out = build_view(with_patches(), DataConfig(image_size=64, blur=True))(image)
    # Colour augmentation keeps a constant image constant, so every patch and the query stay flat.
    flat = out["patches"].flatten(2)  # [L, 3, P*P]
    torch.testing.assert_close(flat, flat[:, :, :1].expand_as(flat))
    query = out["image"].flatten(1)
    torch.testing.assert_close(query, query[:, :1].expand_as(query))


def test_patches_get_independent_colour_augmentation() -> None:
    torch.manual_seed(0)
    image = PIL.Image.new("RGB", (64, 64), (200, 40, 90))
    out = build_view(with_patches(8), DataConfig(image_size=64))(image)
    colours = out["patches"][:, :, 0, 0]  # [L, 3]
    assert len({tuple(colour.tolist()) for colour in colours}) > 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Patches(count=0), "patch count"),
        (lambda: Patches(scale=(0.6, 0.05)), "patch scale"),
        (lambda: Patches(scale=(0.0, 0.5)), "patch scale"),
        (lambda: Patches(size=0), "patch size"),
        (lambda: Patches(steps=(HorizontalFlip(),)), "colour steps only"),
        (lambda: ViewRecipe(()), "at least one step"),
        (lambda: ViewRecipe((ColorJitter(), RandomResizedCrop()), patches=Patches()), "geometry steps"),
        (lambda: RandomResizedCrop(scale=(0.5, 0.2)), "crop scale"),
        (lambda: HorizontalFlip(p=1.5), "flip p"),
        (lambda: ColorJitter(hue=0.7), "hue"),
        (lambda: GaussianBlur(p=-0.1), "blur p"),
        (lambda: PatchGrid(grid=1), "patch grid must be"),
        (lambda: PatchGrid(crop_scale=(0.0, 1.0)), "crop_scale"),
        (lambda: PatchGrid(channel_drop=2.0), "channel_drop"),
        (lambda: ViewRecipe((RandomResizedCrop(),), patches=Patches(), grid=PatchGrid()), "not both"),
    ],
)
def test_bad_recipes_are_rejected(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_build_view_wants_a_recipe() -> None:
    with pytest.raises(TypeError, match="ViewRecipe"):
        build_view("strong", DataConfig())


def test_multi_view_collates_to_dict_of_batches() -> None:
    torch.manual_seed(0)
    cfg = DataConfig(image_size=32)
    views = build_views({"query": STRONG, "key": WEAK, "patches": with_patches()}, cfg)
    batch = default_collate([views(random_image(40, 36, seed=seed)) for seed in range(4)])
    assert batch["query"].shape == (4, 3, 32, 32)
    assert batch["key"].shape == (4, 3, 32, 32)
    assert batch["patches"]["image"].shape == (4, 3, 32, 32)
    assert batch["patches"]["patches"].shape == (4, 5, 3, 9, 9)
    assert batch["patches"]["boxes"].shape == (4, 5, 4)


def test_multi_view_needs_a_view() -> None:
    with pytest.raises(ValueError, match="at least one view"):
        MultiView({})


def grid_view(grid: PatchGrid, size: int = 32) -> PatchGridView:
    """Return a patch-grid view of the deterministic evaluation geometry."""
    view = build_view(ViewRecipe((ResizeCenterCrop(),), grid=grid), DataConfig(source="cifar10", image_size=size))
    assert isinstance(view, PatchGridView)
    return view


def test_grid_view_without_augmentation_is_the_evaluation_grid() -> None:
    image = random_image(32, 32)
    patches = grid_view(PatchGrid(7, crop_scale=(1.0, 1.0), flip=0.0, channel_drop=0.0))(image)
    whole = build_view(EVAL_VIEW, DataConfig(source="cifar10", image_size=32))(image)
    assert patches.shape == (49, 3, 8, 8) and patches.dtype == torch.float32
    torch.testing.assert_close(patches, cut_grid(whole[None], 7)[0])


def test_grid_cells_are_row_major_with_half_overlap() -> None:
    cells = grid_cells(64, 7)
    assert cells.shape == (49, 4)
    assert cells[1].tolist() == [8, 0, 24, 16] and cells[7].tolist() == [0, 8, 16, 24]
    assert cells[-1].tolist() == [48, 48, 64, 64]


def test_grid_sub_crops_stay_inside_their_cells_with_the_requested_area() -> None:
    torch.manual_seed(0)
    view = grid_view(PatchGrid(7, crop_scale=(0.3, 0.6)), size=64)
    boxes = torch.cat([view.sample_boxes() for _ in range(20)])
    cells = view.cells.repeat(20, 1)
    assert torch.all(boxes[:, :2] >= cells[:, :2] - 1e-5) and torch.all(boxes[:, 2:] <= cells[:, 2:] + 1e-5)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 16**2
    assert area.min() >= 0.3 - 1e-5 and area.max() <= 0.6 + 1e-5
    torch.testing.assert_close(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def test_grid_flips_mirror_whole_patches() -> None:
    image = random_image(32, 32)
    plain = grid_view(PatchGrid(7, crop_scale=(1.0, 1.0), flip=0.0, channel_drop=0.0))(image)
    flipped = grid_view(PatchGrid(7, crop_scale=(1.0, 1.0), flip=1.0, channel_drop=0.0))(image)
    torch.testing.assert_close(flipped, plain.flip(-1))


def test_channel_dropping_keeps_one_random_channel_per_patch() -> None:
    torch.manual_seed(0)
    image = random_image(32, 32)
    plain = grid_view(PatchGrid(7, crop_scale=(1.0, 1.0), flip=0.0, channel_drop=0.0))(image)
    dropped = grid_view(PatchGrid(7, crop_scale=(1.0, 1.0), flip=0.0, channel_drop=1.0))(image)
    kept = dropped.abs().sum(dim=(2, 3)) > 0  # [49, 3]
    assert torch.all(kept.sum(dim=1) == 1)
    assert len(set(kept.float().argmax(dim=1).tolist())) == 3  # every channel is kept by some patch
    torch.testing.assert_close(dropped, plain * kept[:, :, None, None])
