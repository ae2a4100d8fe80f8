"""Tests of the batched view executor against the per-image PIL path (the reference).

Parameter laws: two-sample Kolmogorov-Smirnov distances between 4000 draws of each path, fixed seeds,
against the 0.1% critical value 1.95 * sqrt(2 / 4000) = 0.044; probabilities within 4.5 binomial standard
deviations. Pixels for fixed parameters, in uint8 levels: crops, brightness, contrast, saturation,
grayscale and blur within 1.5 levels of PIL (PIL rounds to uint8 after every operation); hue within
0.001 levels of torchvision's tensor kernel, and within 16 of PIL, whose 8-bit HSV round trip alone moves
random pixels by 6 levels at a zero shift. The evaluation view is bit-exact.
"""

from __future__ import annotations

import math
from itertools import permutations

import numpy as np
import PIL.Image
import pytest
import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.config import ConfigError, DataConfig, load_config, with_overrides
from pipeline.data.batched_views import (
    BatchedBlur,
    BatchedColorJitter,
    BatchedFlip,
    BatchedGrayscale,
    BatchedGridView,
    BatchedPatchView,
    BatchedResizedCrop,
    BatchedViews,
    BlurParams,
    DeviceImage,
    JitterParams,
    augmentation_generator,
)
from pipeline.data.build import build_source
from pipeline.data.errors import DataError
from pipeline.data.loader import build_loader
from pipeline.data.recipes import (
    EVAL_VIEW,
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    PatchGrid,
    RandomResizedCrop,
)
from pipeline.data.views import PatchGridView, PatchView, build_view, build_views, grid_cells
from pipeline.methods import get_method, method_names
from pipeline.methods.augmentations import DSCL_KEY, MOCO_V2, cpc_view, pbsd_query

DRAWS = 4000
LEVEL = 1 / 255
JITTER = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)


def random_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    """Return a uniformly random RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def as_float(image: PIL.Image.Image) -> torch.Tensor:
    """Return a PIL image as float [3, H, W] in [0, 1]."""
    return TF.pil_to_tensor(image).float() / 255


def float_batch(images: list[PIL.Image.Image]) -> torch.Tensor:
    """Return PIL images as one float batch [N, 3, H, W] in [0, 1]."""
    return torch.stack([as_float(image) for image in images])


def uint8_batch(images: list[PIL.Image.Image]) -> torch.Tensor:
    """Return PIL images as one uint8 batch [N, 3, H, W]."""
    return torch.stack([TF.pil_to_tensor(image) for image in images])


def ks_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Return the two-sample Kolmogorov-Smirnov distance between two samples."""
    first, second = np.sort(first), np.sort(second)
    values = np.concatenate([first, second])
    below_first = np.searchsorted(first, values, side="right") / len(first)
    below_second = np.searchsorted(second, values, side="right") / len(second)
    return float(np.abs(below_first - below_second).max())


def assert_same_law(reference: np.ndarray, batched: np.ndarray) -> None:
    """Assert two samples are not told apart by a KS test at the 0.1% level (0.044 at 4000 draws each)."""
    distance = ks_distance(reference, batched)
    critical = 1.95 * math.sqrt((len(reference) + len(batched)) / (len(reference) * len(batched)))
    assert distance < critical, f"KS distance {distance:.4f} >= {critical:.4f}"


def assert_rate(hits: torch.Tensor, p: float) -> None:
    """Assert the fraction of True in ``hits`` is within 4.5 binomial standard deviations of ``p``."""
    tolerance = 4.5 * math.sqrt(p * (1 - p) / hits.numel()) + 1e-9
    assert abs(hits.float().mean().item() - p) <= tolerance


def generator(seed: int = 0) -> torch.Generator:
    """Return a seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


# --- parameter laws -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "scale", "ratio"),
    [(32, 32, (0.2, 1.0), (3 / 4, 4 / 3)), (96, 96, (0.08, 1.0), (3 / 4, 4 / 3)), (40, 100, (0.5, 1.0), (1.5, 2.0))],
)
def test_crop_boxes_follow_torchvision_law(width: int, height: int, scale: tuple, ratio: tuple) -> None:
    torch.manual_seed(0)
    reference_step = v2.RandomResizedCrop(32, scale=scale, ratio=ratio)
    image = random_image(width, height)
    reference = np.array([list(reference_step.make_params([image]).values()) for _ in range(DRAWS)])
    step = BatchedResizedCrop(RandomResizedCrop(scale, ratio), 32)
    batched = step.sample(torch.zeros(DRAWS, 3, height, width), generator()).numpy()
    # Columns: top, left, height, width; and the area fraction and aspect ratio they imply.
    for column in range(4):
        assert_same_law(reference[:, column], batched[:, column])
    for boxes in (reference, batched):
        assert (boxes[:, 0] + boxes[:, 2] <= height).all() and (boxes[:, 1] + boxes[:, 3] <= width).all()
    assert_same_law(reference[:, 2] * reference[:, 3], batched[:, 2] * batched[:, 3])


def test_crop_falls_back_to_torchvision_centre_crop() -> None:
    # Ratios of 2-3 never fit a whole-area box in a square image: every draw takes the fallback.
    reference_step = v2.RandomResizedCrop(32, scale=(1.0, 1.0), ratio=(2.0, 3.0))
    expected = list(reference_step.make_params([random_image(30, 30)]).values())
    boxes = BatchedResizedCrop(RandomResizedCrop((1.0, 1.0), (2.0, 3.0)), 32).sample(
        torch.zeros(5, 3, 30, 30), generator()
    )
    assert boxes.tolist() == [expected] * 5


def test_colour_jitter_follows_torchvision_law() -> None:
    torch.manual_seed(0)
    reference_step = v2.ColorJitter(0.4, 0.4, 0.4, 0.1)
    image = random_image(8, 8)
    reference = [reference_step.make_params([image]) for _ in range(DRAWS)]
    params = BatchedColorJitter(JITTER).sample(torch.zeros(DRAWS, 3, 8, 8), generator())
    names = ("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")
    for index, name in enumerate(names):
        assert_same_law(np.array([draw[name] for draw in reference]), params.factors[:, index].numpy())
    assert_rate(params.applied, 0.8)
    # Every image draws its own order: all 24 permutations, each near 1/24 (as torchvision's randperm).
    counts = {order: 0 for order in permutations(range(4))}
    for order in params.order.tolist():
        counts[tuple(order)] += 1
    reference_counts = {order: 0 for order in permutations(range(4))}
    for draw in reference:
        reference_counts[tuple(draw["fn_idx"].tolist())] += 1
    expected = DRAWS / 24
    for order in counts:
        assert abs(counts[order] - expected) < 4.5 * math.sqrt(expected), order
        assert abs(reference_counts[order] - expected) < 4.5 * math.sqrt(expected), order


def test_zero_strengths_switch_adjustments_off() -> None:
    jitter = BatchedColorJitter(ColorJitter(0.4, 0.0, 0.4, 0.0, p=1.0))
    params = jitter.sample(torch.zeros(100, 3, 4, 4), generator())
    assert (params.factors[:, 1] == 1).all() and (params.factors[:, 3] == 0).all()
    assert params.factors[:, 0].min() >= 0.6 and params.factors[:, 0].max() <= 1.4


@pytest.mark.parametrize(
    ("executor", "p"),
    [
        (BatchedFlip(HorizontalFlip(0.5)), 0.5),
        (BatchedGrayscale(Grayscale(0.2)), 0.2),
        (BatchedFlip(HorizontalFlip(0.0)), 0.0),
        (BatchedGrayscale(Grayscale(1.0)), 1.0),
    ],
)
def test_flip_and_grayscale_probabilities(executor: BatchedFlip | BatchedGrayscale, p: float) -> None:
    assert_rate(executor.sample(torch.zeros(DRAWS, 3, 4, 4), generator()), p)


def test_blur_follows_torchvision_law() -> None:
    torch.manual_seed(0)
    reference_step = v2.GaussianBlur(7, sigma=(0.1, 2.0))
    reference = np.array([reference_step.make_params([random_image(8, 8)])["sigma"][0] for _ in range(DRAWS)])
    params = BatchedBlur(GaussianBlur((0.1, 2.0), p=0.5), 7).sample(torch.zeros(DRAWS, 3, 8, 8), generator())
    assert_same_law(reference, params.sigma.numpy())
    assert_rate(params.applied, 0.5)


def test_patch_boxes_follow_patch_view_law() -> None:
    cfg = DataConfig(image_size=32)
    reference_view = PatchView(pbsd_query(count=5), cfg)
    torch.manual_seed(0)
    reference = torch.cat([reference_view.sample_boxes() for _ in range(DRAWS // 5)]).numpy()
    boxes = BatchedPatchView(pbsd_query(count=5), cfg).sample_boxes(DRAWS // 5, generator(), torch.device("cpu"))
    assert boxes.shape == (DRAWS // 5, 5, 4) and boxes.dtype == torch.float32
    batched = boxes.reshape(-1, 4).numpy()
    for column in range(4):
        assert_same_law(reference[:, column], batched[:, column])
    assert (batched[:, :2] >= 0).all() and (batched[:, 2:] <= 32).all()


def test_grid_boxes_follow_patch_grid_view_law() -> None:
    cfg = DataConfig(source="cifar10", image_size=32)
    recipe = cpc_view(PatchGrid(grid=7, crop_scale=(0.5, 1.0)))
    reference_view = PatchGridView(recipe, cfg)
    torch.manual_seed(0)
    count = DRAWS // 49
    reference = torch.stack([reference_view.sample_boxes() for _ in range(count)]).numpy()
    batched = BatchedGridView(recipe, cfg).sample_boxes(count, generator(), torch.device("cpu")).numpy()
    assert batched.shape == reference.shape
    # Pooled over the 49 cells: each box's offset inside its cell and its side.
    cells = grid_cells(32, 7).numpy()
    for boxes in (reference, batched):
        assert (boxes[..., :2] >= cells[:, :2]).all() and (boxes[..., 2:] <= cells[:, 2:] + 1e-5).all()
    for column in range(3):
        assert_same_law(relative(reference, cells)[:, column], relative(batched, cells)[:, column])


def relative(boxes: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Return grid boxes [N, G*G, 4] as [N*G*G, 3]: offsets from their cell's corner and side."""
    offsets = boxes[..., :2] - cells[:, :2]
    return np.concatenate([offsets, boxes[..., 2:3] - boxes[..., 0:1]], axis=-1).reshape(-1, 3)


# --- pixels for fixed parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize(("side", "size"), [(32, 32), (96, 64), (40, 64)])
def test_crop_pixels_match_pil(side: int, size: int) -> None:
    images = [random_image(side, side, seed) for seed in range(6)]
    step = BatchedResizedCrop(RandomResizedCrop((0.08, 1.0)), size)
    batch = float_batch(images)
    boxes = step.sample(batch, generator())
    out = step.apply(batch, boxes)
    for image, box, view in zip(images, boxes.tolist(), out, strict=True):
        expected = as_float(TF.resized_crop(image, *box, [size, size]))
        torch.testing.assert_close(view, expected, atol=1.5 * LEVEL, rtol=0)


def test_flip_pixels_are_exact() -> None:
    batch = float_batch([random_image(8, 8, seed) for seed in range(4)])
    flips = torch.tensor([True, False, True, False])
    out = BatchedFlip(HorizontalFlip()).apply(batch, flips)
    for index in range(4):
        assert torch.equal(out[index], batch[index].flip(-1) if flips[index] else batch[index])


def jitter_params(count: int, op: int, factor: float) -> JitterParams:
    """Return parameters applying only adjustment ``op`` with ``factor`` to every image."""
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * count)
    factors[:, op] = factor
    order = torch.tensor([[op, *[other for other in range(4) if other != op]]] * count)
    return JitterParams(torch.ones(count, dtype=torch.bool), order, factors)


PIL_ADJUST = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)


@pytest.mark.parametrize(("op", "factor"), [(0, 0.6), (0, 1.37), (1, 0.65), (1, 1.4), (2, 0.6), (2, 1.3)])
def test_brightness_contrast_saturation_pixels_match_pil(op: int, factor: float) -> None:
    images = [random_image(16, 16, seed) for seed in range(4)]
    out = BatchedColorJitter(JITTER).apply(float_batch(images), jitter_params(4, op, factor))
    for image, view in zip(images, out, strict=True):
        torch.testing.assert_close(view, as_float(PIL_ADJUST[op](image, factor)), atol=1.5 * LEVEL, rtol=0)


@pytest.mark.parametrize("shift", [-0.1, -0.03, 0.05, 0.1])
def test_hue_pixels_match_torchvision_and_pil(shift: float) -> None:
    images = [random_image(16, 16, seed) for seed in range(4)]
    batch = float_batch(images)
    out = BatchedColorJitter(JITTER).apply(batch, jitter_params(4, 3, shift))
    for image, plain, view in zip(images, batch, out, strict=True):
        torch.testing.assert_close(view, TF.adjust_hue(plain, shift), atol=1e-3 * LEVEL, rtol=0)
        torch.testing.assert_close(view, as_float(TF.adjust_hue(image, shift)), atol=16 * LEVEL, rtol=0)


def test_jitter_in_each_images_own_order_matches_torchvision() -> None:
    batch = float_batch([random_image(16, 16, seed) for seed in range(64)])
    jitter = BatchedColorJitter(JITTER)
    params = jitter.sample(batch, generator(3))
    out = jitter.apply(batch, params)
    assert 0 < params.applied.sum() < 64
    assert torch.equal(out[~params.applied], batch[~params.applied])
    for index in range(64):
        expected = batch[index]
        if params.applied[index]:
            for op in params.order[index].tolist():
                expected = PIL_ADJUST[op](expected, params.factors[index, op].item())
        torch.testing.assert_close(out[index], expected, atol=0.1 * LEVEL, rtol=0)


def test_grayscale_pixels_match_pil() -> None:
    images = [random_image(16, 16, seed) for seed in range(4)]
    chosen = torch.tensor([True, False, True, True])
    out = BatchedGrayscale(Grayscale()).apply(float_batch(images), chosen)
    for image, gray, view in zip(images, chosen, out, strict=True):
        expected = as_float(TF.rgb_to_grayscale(image, 3)) if gray else as_float(image)
        torch.testing.assert_close(view, expected, atol=0.51 * LEVEL, rtol=0)


@pytest.mark.parametrize("sigma", [0.1, 0.7, 2.0])
def test_blur_pixels_match_pil(sigma: float) -> None:
    images = [random_image(32, 32, seed) for seed in range(4)]
    params = BlurParams(torch.tensor([True, True, False, True]), torch.full((4,), sigma))
    out = BatchedBlur(GaussianBlur(), 7).apply(float_batch(images), params)
    for image, blurred, view in zip(images, params.applied, out, strict=True):
        expected = as_float(TF.gaussian_blur(image, [7, 7], [sigma, sigma])) if blurred else as_float(image)
        torch.testing.assert_close(view, expected, atol=0.51 * LEVEL, rtol=0)


def test_patch_pixels_match_pil() -> None:
    cfg = DataConfig(image_size=64)
    recipe = pbsd_query(count=5)
    reference = PatchView(recipe, cfg)
    batched = BatchedPatchView(recipe, cfg)
    images = [random_image(64, 64, seed) for seed in range(3)]
    boxes = batched.sample_boxes(3, generator(), torch.device("cpu"))
    patches = batched.crop_patches(float_batch(images), boxes)
    assert patches.shape == (3, 5, 3, batched.patch_size, batched.patch_size)
    for image, image_boxes, image_patches in zip(images, boxes, patches, strict=True):
        expected = torch.stack([as_float(patch) for patch in reference.crop_patches(image, image_boxes)])
        torch.testing.assert_close(image_patches, expected, atol=1.5 * LEVEL, rtol=0)


def test_grid_patches_match_patch_grid_view() -> None:
    cfg = DataConfig(source="cifar10", image_size=32)
    recipe = cpc_view(PatchGrid(grid=7, flip=0.0, channel_drop=0.0))
    reference, batched = PatchGridView(recipe, cfg), BatchedGridView(recipe, cfg)
    views = torch.randn(2, 3, 32, 32, generator=generator())
    boxes = batched.sample_boxes(2, generator(), torch.device("cpu"))
    out = batched.augment(views, boxes, generator())
    for index in range(2):
        assert torch.equal(out[index], reference.augment(views[index], boxes[index]))


@pytest.mark.parametrize(
    ("source", "size", "width", "height"),
    [
        ("cifar10", 32, 32, 32),
        ("image_folder", 64, 96, 96),
        ("image_folder", 64, 120, 80),
        ("image_folder", 112, 256, 128),
    ],
)
def test_eval_view_is_exact(source: str, size: int, width: int, height: int) -> None:
    cfg = DataConfig(source=source, image_size=size)
    images = [random_image(width, height, seed) for seed in range(3)]
    expected = torch.stack([build_view(EVAL_VIEW, cfg)(image) for image in images])
    out = BatchedViews({"eval": EVAL_VIEW}, cfg)(uint8_batch(images), generator())["eval"]
    assert torch.equal(out, expected)


# --- whole views ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method_name", method_names())
def test_every_methods_views_have_the_pil_paths_structure(method_name: str) -> None:
    config = with_overrides(load_config(None, [f"method.name={method_name}"]), {"data.image_size": 32})
    recipes = get_method(method_name).views(config)
    images = [random_image(32, 32, seed) for seed in range(4)]
    reference = default_collate([build_views(recipes, config.data)(image) for image in images])
    out = BatchedViews(recipes, config.data)(uint8_batch(images), generator())
    assert reference.keys() == out.keys()
    for name in reference:
        expected, got = reference[name], out[name]
        if isinstance(expected, dict):
            assert expected.keys() == got.keys()
            pairs = [(expected[key], got[key]) for key in expected]
        else:
            pairs = [(expected, got)]
        for left, right in pairs:
            assert left.shape == right.shape and left.dtype == right.dtype, name


RECIPES = {
    "moco": MOCO_V2,
    "dscl_key": DSCL_KEY,
    "patches": pbsd_query(count=3),
    "grid": cpc_view(PatchGrid(grid=3)),
}


def flatten(output: object) -> torch.Tensor:
    """Return a view's output (tensor or dict of tensors) as one tensor [B, -1]."""
    if isinstance(output, dict):
        return torch.cat([flatten(value) for value in output.values()], dim=1)
    return output.flatten(1)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_image_of_a_batch_draws_its_own_parameters(name: str) -> None:
    # One image repeated: a batch sharing one set of parameters would give identical rows.
    cfg = DataConfig(image_size=32, blur=True)
    batch = uint8_batch([random_image(32, 32)] * 16)
    rows = flatten(BatchedViews({name: RECIPES[name]}, cfg)(batch, generator())[name])
    distinct = {tuple(row.tolist()) for row in rows}
    assert len(distinct) == 16


def test_steps_draw_per_image_parameters() -> None:
    images = torch.zeros(64, 3, 32, 32)
    boxes = BatchedResizedCrop(RandomResizedCrop(), 32).sample(images, generator())
    assert len({tuple(box) for box in boxes.tolist()}) > 32
    params = BatchedColorJitter(JITTER).sample(images, generator())
    assert len({tuple(order) for order in params.order.tolist()}) > 12
    assert params.factors[:, 0].unique().numel() == 64
    assert 0 < BatchedFlip(HorizontalFlip()).sample(images, generator()).sum() < 64


def test_same_seed_same_views_other_seed_other_views() -> None:
    cfg = DataConfig(image_size=32, blur=True)
    views = BatchedViews(RECIPES, cfg)
    batch = uint8_batch([random_image(32, 32, seed) for seed in range(8)])
    first, again, other = (flatten_all(views(batch, generator(seed))) for seed in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(
        torch.rand(4, generator=augmentation_generator(torch.device("cpu"), 0, 1, 2)),
        torch.rand(4, generator=augmentation_generator(torch.device("cpu"), 0, 1, 2)),
    )
    assert not torch.equal(
        torch.rand(4, generator=augmentation_generator(torch.device("cpu"), 0, 1, 2)),
        torch.rand(4, generator=augmentation_generator(torch.device("cpu"), 0, 0, 2)),
    )


def flatten_all(outputs: dict[str, object]) -> torch.Tensor:
    """Return every view of a batch as one tensor [B, -1]."""
    return torch.cat([flatten(output) for output in outputs.values()], dim=1)


def test_a_view_moves_images_like_the_pil_path() -> None:
    # Same law, same image: the mean of many views of one image agrees with the PIL path's mean.
    cfg = DataConfig(image_size=32)
    image = random_image(32, 32)
    torch.manual_seed(0)
    reference = torch.stack([build_view(MOCO_V2, cfg)(image) for _ in range(400)])
    out = BatchedViews({"moco": MOCO_V2}, cfg)(uint8_batch([image] * 400), generator())["moco"]
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), reference.mean(dim=(0, 2, 3)), atol=0.03, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), reference.std(dim=(0, 2, 3)), atol=0.03, rtol=0)


# --- the device mode's loader side ----------------------------------------------------------------------------


def test_device_image_keeps_fixed_size_sources_and_rejects_other_sizes() -> None:
    transform = DeviceImage(DataConfig(source="cifar10", image_size=32))
    image = random_image(32, 32)
    assert torch.equal(transform(image), TF.pil_to_tensor(image))
    with pytest.raises(DataError, match=r"data.augment_on = 'device' expects every cifar10 image to be 32x32 px"):
        transform(random_image(30, 32))


def test_device_image_resizes_mixed_size_sources_to_the_eval_resize_side() -> None:
    cfg = DataConfig(source="image_folder", image_size=64)
    image = random_image(120, 80)
    out = DeviceImage(cfg)(image)
    assert out.shape == (3, 73, 73) and out.dtype == torch.uint8
    assert torch.equal(out, TF.pil_to_tensor(TF.center_crop(TF.resize(image, 73), 73)))
    # Here the two centre crops round alike, so the evaluation view of the stored square is the PIL path's.
    stored_eval = BatchedViews({"eval": EVAL_VIEW}, cfg)(out[None], generator())["eval"][0]
    assert torch.equal(stored_eval, build_view(EVAL_VIEW, cfg)(image))


def test_device_mode_loader_collates_uint8() -> None:
    cfg = DataConfig(image_size=16, synthetic={"num_train": 20, "num_test": 4})
    source = build_source(cfg, "train", transform=DeviceImage(cfg))
    loader = build_loader(source, 8, rank=0, world_size=1, shuffle=True, drop_last=True, seed=0, num_workers=0)
    loader.set_epoch(0)
    views, labels, indices = next(iter(loader))
    assert views.dtype == torch.uint8 and views.shape == (8, 3, 16, 16)
    assert labels.shape == indices.shape == (8,)


def test_augment_on_rejects_unknown_values() -> None:
    with pytest.raises(ConfigError, match=r"data.augment_on = 'gpu'"):
        with_overrides(load_config("quickstart.yaml"), {"data.augment_on": "gpu"})


def test_views_reject_anything_but_uint8_batches() -> None:
    with pytest.raises(TypeError, match="uint8"):
        BatchedViews({"moco": MOCO_V2}, DataConfig())(torch.zeros(2, 3, 32, 32), generator())
    with pytest.raises(ValueError, match="at least one view"):
        BatchedViews({}, DataConfig())
