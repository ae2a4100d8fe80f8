"""The official view recipes execute exactly the torchvision pipelines of the methods' papers and code."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision.transforms import v2

from pipeline.config import DataConfig
from pipeline.data.views import blur_kernel_size, build_view, normalization
from pipeline.methods.augmentations import ASCL_WEAK, DSCL_KEY, MOCO_V2, SUPCON, pbsd_query


def image(seed: int) -> PIL.Image.Image:
    """Return a random 40 x 36 RGB image."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(36, 40, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def reference(steps: list[v2.Transform], cfg: DataConfig) -> v2.Compose:
    """Return a hand-written torchvision pipeline ending in the source's normalisation."""
    mean, std = normalization(cfg)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]
    return v2.Compose([*steps, *tail])


def crop(size: int) -> v2.Transform:
    return v2.RandomResizedCrop(size, scale=(0.2, 1.0))


def jitter(hue: float) -> v2.Transform:
    return v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, hue)], p=0.8)


def blur(size: int) -> v2.Transform:
    return v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))], p=0.5)


@pytest.mark.parametrize("size", [32, 64])
def test_recipes_draw_and_compute_what_the_official_pipelines_do(size: int) -> None:
    cfg = DataConfig(image_size=size)
    strong_colour = [jitter(0.1), v2.RandomGrayscale(p=0.2)] + ([blur(size)] if size >= 64 else [])
    expected = {
        "moco_v2": reference([crop(size), *strong_colour, v2.RandomHorizontalFlip()], cfg),
        "supcon": reference([crop(size), v2.RandomHorizontalFlip(), jitter(0.1), v2.RandomGrayscale(p=0.2)], cfg),
        "ascl_weak": reference([crop(size), v2.RandomHorizontalFlip()], cfg),
        "dscl_key": reference([crop(size), v2.RandomHorizontalFlip(), jitter(0.0)], cfg),
    }
    recipes = {"moco_v2": MOCO_V2, "supcon": SUPCON, "ascl_weak": ASCL_WEAK, "dscl_key": DSCL_KEY}
    for name, recipe in recipes.items():
        view = build_view(recipe, cfg)
        for seed in range(4):
            torch.manual_seed(seed)
            mine = view(image(seed))
            torch.manual_seed(seed)
            theirs = expected[name](image(seed))
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=f"{name} seed {seed}")


def test_pbsd_query_cuts_patches_after_geometry_and_before_colour() -> None:
    recipe = pbsd_query(count=3, scale=(0.1, 0.5), size=12)
    assert [type(step).__name__ for step in recipe.geometry] == ["RandomResizedCrop", "HorizontalFlip"]
    assert recipe.colour == recipe.patches.steps
    out = build_view(recipe, DataConfig(image_size=64))(image(0))
    assert out["patches"].shape == (3, 3, 12, 12)
