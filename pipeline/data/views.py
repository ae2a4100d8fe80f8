"""View transforms: the augmentations each method applies to a PIL RGB image.

Every view ends in a float32 tensor normalised by the data source's mean and std. Kinds:
``strong`` (MoCo v2 query), ``weak`` (ASCL key), ``dscl_key`` (DSCL key), ``supcon``,
``eval`` and ``query_patches`` (DSCL+PBSD query with patches cropped from its geometry).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import PIL.Image
import torch
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pipeline.config import DataConfig

IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SOURCE_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "synthetic": ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
VIEW_KINDS = ("strong", "weak", "dscl_key", "supcon", "eval", "query_patches")
CROP_SCALE = (0.2, 1.0)
PATCH_RATIO = (3.0 / 4.0, 4.0 / 3.0)
PATCH_OPTIONS = ("num_patches", "patch_scale", "patch_size")

View = Callable[[PIL.Image.Image], Any]


def normalization(data_cfg: DataConfig) -> tuple[list[float], list[float]]:
    """Return the per-channel (mean, std): the config's values if set, else the source's defaults."""
    default_mean, default_std = SOURCE_NORMALIZATION.get(data_cfg.source, IMAGENET_NORMALIZATION)
    mean = data_cfg.mean if data_cfg.mean is not None else default_mean
    std = data_cfg.std if data_cfg.std is not None else default_std
    return list(mean), list(std)


def blur_enabled(data_cfg: DataConfig) -> bool:
    """Return whether strong views blur: the config's choice, by default only for images of 64 px or more."""
    return data_cfg.blur if data_cfg.blur is not None else data_cfg.image_size >= 64


def blur_kernel_size(size: int) -> int:
    """Return the odd Gaussian blur kernel size for an image side: about 10% of it, at least 3."""
    kernel = max(3, int(0.1 * size))
    return kernel if kernel % 2 else kernel + 1


def default_patch_size(image_size: int) -> int:
    """Return the PBSD patch side: 64 px at ImageNet's 224 px, proportionally smaller, at least 8."""
    return max(8, round(64 * image_size / 224))


def _to_tensor(data_cfg: DataConfig) -> list[v2.Transform]:
    """Return the steps that turn a PIL image into a plain normalised float32 tensor."""
    mean, std = normalization(data_cfg)
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def _random_crop(size: int) -> v2.Transform:
    """Return the random resized crop every training view starts with."""
    return v2.RandomResizedCrop(size, scale=CROP_SCALE)


def _jitter(hue: float) -> v2.Transform:
    """Return colour jitter (0.4 brightness, contrast, saturation) applied with probability 0.8."""
    return v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, hue)], p=0.8)


def _strong_colour(size: int, blur: bool) -> list[v2.Transform]:
    """Return MoCo v2's colour steps for an image of side ``size``: jitter, grayscale, optional blur."""
    steps = [_jitter(0.1), v2.RandomGrayscale(p=0.2)]
    if blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel_size(size), sigma=(0.1, 2.0))], p=0.5))
    return steps


def _eval_steps(size: int) -> list[v2.Transform]:
    """Return the deterministic resize + centre crop: ImageNet's 256/224 ratio from 64 px on."""
    resize = round(size * 256 / 224) if size >= 64 else size
    return [v2.Resize(resize), v2.CenterCrop(size)]


class PatchQueryView:
    """DSCL+PBSD query: a strong view plus patches cropped from its geometry before colour augmentation."""

    def __init__(
        self,
        data_cfg: DataConfig,
        num_patches: int = 5,
        patch_scale: Sequence[float] = (0.05, 0.6),
        patch_size: int | None = None,
    ) -> None:
        if isinstance(num_patches, bool) or not isinstance(num_patches, int) or num_patches < 1:
            raise ValueError(f"num_patches must be a positive integer, got {num_patches!r}")
        if len(patch_scale) != 2 or not 0 < patch_scale[0] <= patch_scale[1] <= 1:
            raise ValueError(f"patch_scale must be (low, high) with 0 < low <= high <= 1, got {patch_scale!r}")
        if patch_size is not None and (isinstance(patch_size, bool) or not isinstance(patch_size, int)):
            raise ValueError(f"patch_size must be an integer, got {patch_size!r}")
        if patch_size is not None and patch_size < 1:
            raise ValueError(f"patch_size must be at least 1, got {patch_size}")
        self.image_size = data_cfg.image_size
        self.num_patches = num_patches
        self.patch_scale = (float(patch_scale[0]), float(patch_scale[1]))
        self.patch_size = patch_size if patch_size is not None else default_patch_size(self.image_size)
        blur = blur_enabled(data_cfg)
        self.geometry = v2.Compose([_random_crop(self.image_size), v2.RandomHorizontalFlip()])
        self.query_colour = v2.Compose([*_strong_colour(self.image_size, blur), *_to_tensor(data_cfg)])
        self.patch_colour = v2.Compose([*_strong_colour(self.patch_size, blur), *_to_tensor(data_cfg)])

    def sample_boxes(self) -> Tensor:
        """Return [L, 4] random boxes (x1, y1, x2, y2), whole pixels inside the query frame."""
        size, count = self.image_size, self.num_patches
        # Same law as RandomResizedCrop: uniform area fraction, log-uniform aspect ratio (w / h);
        # boxes that do not fit are clipped to the frame instead of redrawn.
        area = torch.empty(count).uniform_(*self.patch_scale) * size**2
        ratio = torch.empty(count).uniform_(math.log(PATCH_RATIO[0]), math.log(PATCH_RATIO[1])).exp()
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
        """Return {"image": [3, S, S], "patches": [L, 3, P, P], "boxes": [L, 4] in query-view pixels}."""
        geometry_image = self.geometry(image)
        boxes = self.sample_boxes()
        patches = [self.patch_colour(patch) for patch in self.crop_patches(geometry_image, boxes)]
        return {"image": self.query_colour(geometry_image), "patches": torch.stack(patches), "boxes": boxes}


def build_view(kind: str, data_cfg: DataConfig, **options: Any) -> View:
    """Return the view transform of ``kind`` for this data config (options only for query_patches)."""
    if kind not in VIEW_KINDS:
        raise ValueError(f"unknown view kind {kind!r}; expected one of {', '.join(VIEW_KINDS)}")
    if kind == "query_patches":
        unknown = sorted(set(options) - set(PATCH_OPTIONS))
        if unknown:
            raise ValueError(f"unknown query_patches options {unknown}; expected some of {', '.join(PATCH_OPTIONS)}")
        return PatchQueryView(data_cfg, **options)
    if options:
        raise ValueError(f"view kind {kind!r} takes no options, got {sorted(options)}")
    return v2.Compose([*_plain_steps(kind, data_cfg.image_size, blur_enabled(data_cfg)), *_to_tensor(data_cfg)])


def _plain_steps(kind: str, size: int, blur: bool) -> list[v2.Transform]:
    """Return the PIL-to-PIL steps of a view kind that yields a single image."""
    if kind == "strong":
        return [_random_crop(size), *_strong_colour(size, blur), v2.RandomHorizontalFlip()]
    if kind == "weak":
        return [_random_crop(size), v2.RandomHorizontalFlip()]
    if kind == "dscl_key":
        return [_random_crop(size), v2.RandomHorizontalFlip(), _jitter(0.0)]
    if kind == "supcon":
        return [_random_crop(size), v2.RandomHorizontalFlip(), _jitter(0.1), v2.RandomGrayscale(p=0.2)]
    return _eval_steps(size)


class MultiView:
    """Several named views of one image, e.g. {"query": strong, "key": weak}."""

    def __init__(self, views: Mapping[str, View]) -> None:
        if not views:
            raise ValueError("MultiView needs at least one view, got none")
        self.views = dict(views)

    def __call__(self, image: PIL.Image.Image) -> dict[str, Any]:
        """Return {view name: that view's output} for one image."""
        return {name: view(image) for name, view in self.views.items()}
