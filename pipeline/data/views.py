"""Execute view recipes per image with torchvision: PIL RGB image in, normalised float32 tensors out.

Recipes (``pipeline.data.recipes``) say what a view does; this module is today's backend that does
it. Every view ends in a float32 tensor normalised by the data source's mean and std. A recipe
with patches yields ``{"image", "patches", "boxes"}`` instead of a single tensor; a recipe with a
patch grid yields its augmented patches ``[G*G, 3, P, P]``, row by row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.config import DataConfig
from pipeline.data.recipes import (
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    PatchGrid,
    RandomResizedCrop,
    ResizeCenterCrop,
    Step,
    ViewRecipe,
    grid_patch_size,
)

IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SOURCE_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}

View = Callable[[PIL.Image.Image], Any]


def normalization(data_cfg: DataConfig) -> tuple[list[float], list[float]]:
    """Return the per-channel (mean, std): the config's values if set, else the source's defaults."""
    default_mean, default_std = SOURCE_NORMALIZATION.get(data_cfg.source, IMAGENET_NORMALIZATION)
    mean = data_cfg.mean if data_cfg.mean is not None else default_mean
    std = data_cfg.std if data_cfg.std is not None else default_std
    return list(mean), list(std)


def blur_enabled(data_cfg: DataConfig) -> bool:
    """Return whether blur steps run: the config's choice, by default only for images of 64 px or more."""
    return data_cfg.blur if data_cfg.blur is not None else data_cfg.image_size >= 64


def blur_kernel_size(size: int) -> int:
    """Return the odd Gaussian blur kernel size for an image side: about 10% of it, at least 3."""
    kernel = max(3, int(0.1 * size))
    return kernel if kernel % 2 else kernel + 1


def default_patch_size(image_size: int) -> int:
    """Return the PBSD patch side: 64 px at ImageNet's 224 px, proportionally smaller, at least 8."""
    return max(8, round(64 * image_size / 224))


def eval_resize_side(size: int) -> int:
    """Return the evaluation view's resize side for a crop of ``size``: 256/224 of it from 64 px on, else ``size``."""
    return round(size * 256 / 224) if size >= 64 else size


def _to_tensor(data_cfg: DataConfig) -> list[v2.Transform]:
    """Return the steps that turn a PIL image into a plain normalised float32 tensor."""
    mean, std = normalization(data_cfg)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def step_transforms(step: Step, size: int, blur: bool) -> list[v2.Transform]:
    """Return the torchvision transforms executing one recipe step on an image of side ``size`` (none for off blur)."""
    if isinstance(step, RandomResizedCrop):
        return [v2.RandomResizedCrop(size, scale=step.scale, ratio=step.ratio)]
    if isinstance(step, HorizontalFlip):
        return [v2.RandomHorizontalFlip(p=step.p)]
    if isinstance(step, ColorJitter):
        jitter = v2.ColorJitter(step.brightness, step.contrast, step.saturation, step.hue)
        return [v2.RandomApply([jitter], p=step.p)]
    if isinstance(step, Grayscale):
        return [v2.RandomGrayscale(p=step.p)]
    if isinstance(step, GaussianBlur):
        if not blur:
            return []
        return [v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=step.sigma)], p=step.p)]
    if isinstance(step, ResizeCenterCrop):
        return [v2.Resize(eval_resize_side(size)), v2.CenterCrop(size)]
    raise TypeError(f"unknown view step {step!r}")


def _compose(steps: tuple[Step, ...], size: int, blur: bool) -> list[v2.Transform]:
    """Return the transforms of several steps, in order."""
    return [transform for step in steps for transform in step_transforms(step, size, blur)]


class PatchView:
    """A view plus patches cut from its geometry before colour augmentation (DSCL+PBSD's query)."""

    def __init__(self, recipe: ViewRecipe, data_cfg: DataConfig) -> None:
        if recipe.patches is None:
            raise ValueError("PatchView needs a recipe with patches")
        patches = recipe.patches
        self.image_size = data_cfg.image_size
        self.num_patches = patches.count
        self.patch_scale = patches.scale
        self.patch_ratio = patches.ratio
        self.patch_size = patches.size if patches.size is not None else default_patch_size(self.image_size)
        blur = blur_enabled(data_cfg)
        self.geometry = v2.Compose(_compose(recipe.geometry, self.image_size, blur))
        self.query_colour = v2.Compose([*_compose(recipe.colour, self.image_size, blur), *_to_tensor(data_cfg)])
        self.patch_colour = v2.Compose([*_compose(patches.steps, self.patch_size, blur), *_to_tensor(data_cfg)])

    def sample_boxes(self) -> Tensor:
        """Return [L, 4] random boxes (x1, y1, x2, y2), whole pixels inside the view's frame."""
        size, count = self.image_size, self.num_patches
        # Same law as RandomResizedCrop: uniform area fraction, log-uniform aspect ratio (w / h);
        # boxes that do not fit are clipped to the frame instead of redrawn.
        area = torch.empty(count).uniform_(*self.patch_scale) * size**2
        ratio = torch.empty(count).uniform_(math.log(self.patch_ratio[0]), math.log(self.patch_ratio[1])).exp()
        width = torch.sqrt(area * ratio).round().clamp(1, size)
        height = torch.sqrt(area / ratio).round().clamp(1, size)
        # rand() < 1, so the floor keeps every box inside the frame.
        left = torch.floor(torch.rand(count) * (size - width + 1))
        top = torch.floor(torch.rand(count) * (size - height + 1))
        return torch.stack([left, top, left + width, top + height], dim=1)

    def crop_patches(self, image: PIL.Image.Image, boxes: Tensor) -> list[PIL.Image.Image]:
        """Return one patch per box of ``image``, each resized to patch_size x patch_size."""
        size = [self.patch_size, self.patch_size]
        return [
            TF.resized_crop(image, top, left, bottom - top, right - left, size, antialias=True)
            for left, top, right, bottom in boxes.int().tolist()
        ]

    def __call__(self, image: PIL.Image.Image) -> dict[str, Tensor]:
        """Return {"image": [3, S, S], "patches": [L, 3, P, P], "boxes": [L, 4] in view pixels}."""
        geometry_image = self.geometry(image)
        boxes = self.sample_boxes()
        patches = [self.patch_colour(patch) for patch in self.crop_patches(geometry_image, boxes)]
        return {"image": self.query_colour(geometry_image), "patches": torch.stack(patches), "boxes": boxes}


def grid_cells(image_size: int, grid: int) -> Tensor:
    """Return the ``[grid * grid, 4]`` cells (x1, y1, x2, y2) of the half-overlapping grid, row by row."""
    side = grid_patch_size(image_size, grid)
    starts = torch.arange(grid, dtype=torch.float32) * (side // 2)
    top, left = torch.meshgrid(starts, starts, indexing="ij")
    top, left = top.flatten(), left.flatten()
    return torch.stack([left, top, left + side, top + side], dim=1)


class PatchGridView:
    """A view cut into a grid of half-overlapping patches, each augmented on its own (CPC v2's input)."""

    def __init__(self, recipe: ViewRecipe, data_cfg: DataConfig) -> None:
        if recipe.grid is None:
            raise ValueError("PatchGridView needs a recipe with a patch grid")
        self.settings: PatchGrid = recipe.grid
        self.cells = grid_cells(data_cfg.image_size, recipe.grid.grid)
        self.patch_size = int(self.cells[0, 2] - self.cells[0, 0])
        blur = blur_enabled(data_cfg)
        self.view = v2.Compose([*_compose(recipe.steps, data_cfg.image_size, blur), *_to_tensor(data_cfg)])

    def sample_boxes(self) -> Tensor:
        """Return one random square sub-box (x1, y1, x2, y2) inside every grid cell: ``[G*G, 4]``."""
        count = len(self.cells)
        low, high = self.settings.crop_scale
        side = self.patch_size * torch.empty(count).uniform_(low, high).sqrt()
        left = self.cells[:, 0] + torch.rand(count) * (self.patch_size - side)
        top = self.cells[:, 1] + torch.rand(count) * (self.patch_size - side)
        return torch.stack([left, top, left + side, top + side], dim=1)

    def augment(self, view: Tensor, boxes: Tensor) -> Tensor:
        """Return the patches of ``boxes`` in the normalised ``view`` [3, S, S], flipped and channel-dropped."""
        # One RoI-align call resamples every patch; aligned pixel centres make a whole cell an exact copy.
        size = self.patch_size
        patches = roi_align(view[None], [boxes], output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
        count = len(boxes)
        flip = torch.rand(count) < self.settings.flip
        patches = torch.where(flip[:, None, None, None], patches.flip(-1), patches)
        drop = torch.rand(count) < self.settings.channel_drop
        kept = torch.nn.functional.one_hot(torch.randint(3, (count,)), 3).to(patches.dtype)
        mask = torch.where(drop[:, None], kept, torch.ones_like(kept))
        return patches * mask[:, :, None, None]

    def __call__(self, image: PIL.Image.Image) -> Tensor:
        """Return the augmented patches ``[G*G, 3, P, P]`` of one view of ``image``, row by row."""
        return self.augment(self.view(image), self.sample_boxes())


def build_view(recipe: ViewRecipe, data_cfg: DataConfig) -> View:
    """Return the per-image transform executing ``recipe`` for this data config."""
    if not isinstance(recipe, ViewRecipe):
        raise TypeError(f"build_view expects a ViewRecipe, got {type(recipe).__name__}")
    if recipe.patches is not None:
        return PatchView(recipe, data_cfg)
    if recipe.grid is not None:
        return PatchGridView(recipe, data_cfg)
    side = recipe.side(data_cfg.image_size)
    return v2.Compose([*_compose(recipe.steps, side, blur_enabled(data_cfg)), *_to_tensor(data_cfg)])


class MultiView:
    """Several named views of one image, e.g. {"query": strong, "key": weak}."""

    def __init__(self, views: Mapping[str, View]) -> None:
        if not views:
            raise ValueError("MultiView needs at least one view, got none")
        self.views = dict(views)

    def __call__(self, image: PIL.Image.Image) -> dict[str, Any]:
        """Return {view name: that view's output} for one image."""
        return {name: view(image) for name, view in self.views.items()}


def build_views(recipes: Mapping[str, ViewRecipe], data_cfg: DataConfig) -> MultiView:
    """Return the transform producing every named view of ``recipes`` from one image."""
    return MultiView({name: build_view(recipe, data_cfg) for name, recipe in recipes.items()})
