"""Execute view recipes on whole uint8 batches on the training device (``data.augment_on: device``).

The loader hands over fixed-size uint8 images ``[B, 3, H, W]`` (:class:`DeviceImage`); :class:`BatchedViews`
makes every declared view of the batch in a few vectorised calls on whatever device the batch is on, with
per-sample random parameters drawn from an explicit ``torch.Generator``. Its outputs are those of the
per-image PIL path (``pipeline.data.views``, the reference): a normalised float32 ``[B, 3, S, S]`` per
plain view, ``{"image", "patches", "boxes"}`` for a recipe with patches, ``[B, G*G, 3, P, P]`` for a grid.

Each step draws its parameters with torchvision's laws (``sample``) and applies them (``apply``), so the
tests compare both halves with the PIL path. From kornia: ``rgb_to_grayscale`` (PIL's 0.299/0.587/0.114
luma) and ``gaussian_blur2d`` (per-sample sigma, reflect border, torchvision's kernel). Written here, and why:

- Every random draw. kornia's augmentation modules take no ``torch.Generator`` (they draw from the global
  RNG, so a seeded run would depend on whatever else draws from it) and draw ColorJitter's order once per
  batch, where torchvision draws it per image.
- The colour jitter. kornia's per-sample ``adjust_*`` functions have torchvision's semantics, but each
  adjusts the whole batch, so a per-image order needs all of them at each of the four positions; measured
  on one CPU thread at 128 x 32 px, its contrast and saturation calls took 2.1-2.4 ms each and its hue
  call 9.8 ms. Here one fused blend (brightness, contrast and saturation are all clamp(f x + (1 - f) y)
  with y black, the mean grey or the grey image) serves every image at each position, and hue rotates
  only the images that take it at that position, in RGB without building an HSV image (:func:`shift_hue`,
  within 0.001 uint8 levels of torchvision's tensor kernel).
- The resized crop: PIL's bilinear resampling (a triangle filter widened by the downscale factor, confined
  to the crop box, horizontal pass first) as two per-sample matrix products. kornia and ``roi_align`` sample
  bilinearly at the output pixel centres: no antialiasing when shrinking, and pixels outside the crop leak
  into its border.
- The evaluation geometry (:class:`BatchedResizeCenterCrop`): the same resampling in PIL's 22-bit
  fixed-point arithmetic, rounded to uint8 after each pass, in float64 (every sum is an exact integer), so
  it is bit-exact with the PIL path.
- PBSD's patch boxes and CPC's grid: the laws of ``PatchView.sample_boxes`` and ``PatchGridView`` batched;
  the grid's patches come from the same ``roi_align`` call as the PIL path.

Not bit-exact (within interpolation tolerance, measured in ``tests/data/test_batched_views.py``): the PIL
path rounds to uint8 after every step and jitters hue in PIL's 8-bit HSV (shift truncated to 1/255 of the
circle); this path stays in float32 from the first step on and shifts hue continuously.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from kornia.color import rgb_to_grayscale
from kornia.filters import gaussian_blur2d
from torch import Tensor
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from pipeline.config import DataConfig
from pipeline.data.errors import DataError
from pipeline.data.recipes import (
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    RandomResizedCrop,
    ResizeCenterCrop,
    Step,
    ViewRecipe,
)
from pipeline.data.views import (
    blur_enabled,
    blur_kernel_size,
    default_patch_size,
    eval_resize_side,
    grid_cells,
    normalization,
)

# Sources whose images all have one known side: the loader hands them over unresized.
NATIVE_SIDE = {"cifar10": 32, "cifar100": 32, "stl10": 96}
PIL_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2
UINT8_SCALE = 1.0 / 255  # torchvision's ToDtype(scale=True) multiplies by it: the same floats as the PIL path
CROP_TRIES = 10  # torchvision's RandomResizedCrop draws this many boxes before falling back to a centre crop
AUGMENT_STREAM = 0x5EED  # keeps the augmentation generator's seed apart from the loop's other streams
HUE_SECTOR_OFFSETS = (5.0, 3.0, 1.0)  # R, G, B in the HSV-to-RGB formula f(n) = V - C max(0, min(k, 4 - k, 1))


def device_image_side(data_cfg: DataConfig) -> tuple[int, bool]:
    """Return the side of the square uint8 images the loader hands over in device mode, and whether it resizes.

    Synthetic, CIFAR and STL-10 images all share one size and pass unchanged, so the batched crops see what
    the PIL path sees. Image folders, list files and Parquet shards may mix sizes: each image's shorter side
    is resized to the evaluation view's resize side (``image_size`` below 64 px, 256/224 of it from 64 px on)
    and its centre square kept, so crops of non-square images lose the borders outside that square.
    """
    if data_cfg.source == "synthetic":
        return data_cfg.image_size, False
    if data_cfg.source in NATIVE_SIDE:
        return NATIVE_SIDE[data_cfg.source], False
    return eval_resize_side(data_cfg.image_size), True


class DeviceImage:
    """The device mode's dataset transform: a PIL RGB image to a fixed-size uint8 tensor ``[3, L, L]``."""

    def __init__(self, data_cfg: DataConfig) -> None:
        self.source = data_cfg.source
        self.side, self.resize = device_image_side(data_cfg)

    def __call__(self, image: PIL.Image.Image) -> Tensor:
        """Return ``image`` as uint8 ``[3, L, L]``, resized and centre-cropped where the source mixes sizes."""
        if self.resize:
            image = TF.center_crop(TF.resize(image, self.side), self.side)
        elif image.size != (self.side, self.side):
            raise DataError(
                f"data.augment_on = 'device' expects every {self.source} image to be {self.side}x{self.side} px, "
                f"got {image.size[0]}x{image.size[1]}; set data.augment_on: loader"
            )
        return TF.pil_to_tensor(image)


def augmentation_generator(device: torch.device, seed: int, rank: int, epoch: int) -> torch.Generator:
    """Return the generator of one worker's epoch of batched views, seeded from (seed, rank, epoch) alone."""
    value = int(np.random.SeedSequence([seed, rank, epoch, AUGMENT_STREAM]).generate_state(1)[0])
    return torch.Generator(device=device).manual_seed(value)


def _uniform(
    shape: tuple[int, ...], low: float, high: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Return float64 samples uniform in [low, high)."""
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float64) * (high - low) + low


def _below(bound: Tensor, generator: torch.Generator) -> Tensor:
    """Return one integer uniform in [0, bound) per element of the int64 ``bound`` (torch.randint's law)."""
    draw = torch.rand(bound.shape, generator=generator, device=bound.device, dtype=torch.float64)
    return torch.minimum((draw * bound).floor().long(), bound - 1)


def _chance(count: int, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """Return ``count`` booleans, each True with probability ``p`` (torchvision's ``rand < p``)."""
    return torch.rand(count, generator=generator, device=device) < p


def resample_weights(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """Return PIL's bilinear weights ``[N, out_size, in_size]`` (float64) resizing boxes [start, start+length).

    Row ``o`` holds the weights of output pixel ``o``: a triangle filter of half-width max(1, scale) centred on
    it, restricted to the box and normalised (Pillow's ``precompute_coeffs``, in the same order of operations).
    """
    scale = length.double() / out_size  # [N]
    filter_scale = scale.clamp(min=1.0)
    outputs = torch.arange(out_size, device=start.device, dtype=torch.float64)
    centre = (outputs[None] + 0.5) * scale[:, None]  # [N, out], in box coordinates
    pixels = torch.arange(in_size, device=start.device)[None] - start[:, None]  # [N, in], in box coordinates
    distance = ((pixels.double()[:, None, :] - centre[:, :, None]) + 0.5) * (1.0 / filter_scale)[:, None, None]
    inside = (pixels >= 0) & (pixels < length[:, None])
    weights = (1.0 - distance.abs()).clamp(min=0.0) * inside[:, None, :]
    return weights / weights.sum(dim=-1, keepdim=True)


def _resample(images: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """Return ``rows @ images @ columns^T`` per image: ``[..., C, H, W]`` to ``[..., C, H', W']`` (horizontal first)."""
    horizontal = images @ columns.unsqueeze(-3).transpose(-1, -2)
    return rows.unsqueeze(-3) @ horizontal


def _fixed_point(weights: Tensor) -> Tensor:
    """Return PIL's integer coefficients of non-negative weights (float64 holding integers): scaled by 2^22, rounded."""
    return torch.floor(weights * (1 << PIL_PRECISION_BITS) + 0.5)


def _clip8(sums: Tensor) -> Tensor:
    """Return PIL's uint8 result of fixed-point sums (float64 holding integers): (sum + 2^21) >> 22, clipped."""
    return torch.floor((sums + (1 << (PIL_PRECISION_BITS - 1))) / (1 << PIL_PRECISION_BITS)).clamp(0, 255)


class BatchedStep(ABC):
    """One recipe step on a float batch ``[N, 3, H, W]`` in [0, 1]: parameters drawn per image, then applied."""

    @abstractmethod
    def sample(self, images: Tensor, generator: torch.Generator) -> Any:
        """Return this step's random parameters for every image of ``images``."""

    @abstractmethod
    def apply(self, images: Tensor, params: Any) -> Tensor:
        """Return ``images`` after this step with the given parameters."""

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return ``images`` after this step with freshly drawn parameters."""
        return self.apply(images, self.sample(images, generator))


class BatchedResizedCrop(BatchedStep):
    """torchvision's RandomResizedCrop per image: parameters ``[N, 4]`` int64 (top, left, height, width)."""

    def __init__(self, step: RandomResizedCrop, size: int) -> None:
        self.step, self.size = step, size

    def sample(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return one crop box per image: 10 draws (uniform area, log-uniform ratio), the first that fits wins."""
        count, (height, width), device = images.shape[0], images.shape[-2:], images.device
        log_low, log_high = math.log(self.step.ratio[0]), math.log(self.step.ratio[1])
        area = height * width * _uniform((count, CROP_TRIES), *self.step.scale, generator, device)
        ratio = torch.exp(_uniform((count, CROP_TRIES), log_low, log_high, generator, device))
        widths = torch.sqrt(area * ratio).round().long()
        heights = torch.sqrt(area / ratio).round().long()
        fits = (widths > 0) & (widths <= width) & (heights > 0) & (heights <= height)
        first = fits.int().argmax(dim=1, keepdim=True)  # the first fitting try (argmax returns the first maximum)
        crop_w, crop_h = widths.gather(1, first)[:, 0], heights.gather(1, first)[:, 0]
        top, left = _below(height - crop_h + 1, generator), _below(width - crop_w + 1, generator)
        fallback_h, fallback_w = self._centre_fallback(height, width)
        found = fits.any(dim=1)
        crop_h = torch.where(found, crop_h, fallback_h)
        crop_w = torch.where(found, crop_w, fallback_w)
        top = torch.where(found, top, (height - fallback_h) // 2)
        left = torch.where(found, left, (width - fallback_w) // 2)
        return torch.stack([top, left, crop_h, crop_w], dim=1)

    def _centre_fallback(self, height: int, width: int) -> tuple[int, int]:
        """Return torchvision's fallback crop (height, width): the whole image clamped to the ratio range."""
        low, high = min(self.step.ratio), max(self.step.ratio)
        if width / height < low:
            return int(round(width / low)), width
        if width / height > high:
            return height, int(round(height * high))
        return height, width

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Return every image's box resampled to size x size with PIL's bilinear filter."""
        top, left, crop_h, crop_w = params.unbind(dim=1)
        rows = resample_weights(top, crop_h, images.shape[-2], self.size).to(images.dtype)
        columns = resample_weights(left, crop_w, images.shape[-1], self.size).to(images.dtype)
        return _resample(images, rows, columns)


class BatchedFlip(BatchedStep):
    """Horizontal flip with probability p per image: parameters ``[N]`` bool."""

    def __init__(self, step: HorizontalFlip) -> None:
        self.step = step

    def sample(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return which images are flipped."""
        return _chance(images.shape[0], self.step.p, generator, images.device)

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Return ``images`` with the chosen ones mirrored left-right."""
        return torch.where(params[:, None, None, None], images.flip(-1), images)


@dataclass(frozen=True)
class JitterParams:
    """Per-image colour jitter: applied ``[N]`` bool, order ``[N, 4]`` (a permutation of 0..3), factors ``[N, 4]``.

    Columns of ``factors`` and entries of ``order``: 0 brightness, 1 contrast, 2 saturation, 3 hue (a shift in
    turns, torchvision's unit).
    """

    applied: Tensor
    order: Tensor
    factors: Tensor


class BatchedColorJitter(BatchedStep):
    """torchvision's ``RandomApply([ColorJitter], p)`` per image, each image in its own random order."""

    def __init__(self, step: ColorJitter) -> None:
        self.step = step
        strengths = (step.brightness, step.contrast, step.saturation)
        # torchvision's ranges; a zero strength switches its adjustment off (as torchvision's None).
        self.ranges: list[tuple[float, float] | None] = [
            (max(0.0, 1.0 - value), 1.0 + value) if value > 0 else None for value in strengths
        ]
        self.ranges.append((-step.hue, step.hue) if step.hue > 0 else None)

    def sample(self, images: Tensor, generator: torch.Generator) -> JitterParams:
        """Return whether each image is jittered, its order of the four adjustments and its factors."""
        count, device = images.shape[0], images.device
        applied = _chance(count, self.step.p, generator, device)
        order = torch.rand((count, 4), generator=generator, device=device).argsort(dim=1)
        neutral = (1.0, 1.0, 1.0, 0.0)
        factors = torch.stack(
            [
                _uniform((count,), *bounds, generator, device) if bounds else torch.full((count,), value, device=device)
                for bounds, value in zip(self.ranges, neutral, strict=True)
            ],
            dim=1,
        ).float()
        return JitterParams(applied, order, factors)

    def apply(self, images: Tensor, params: JitterParams) -> Tensor:
        """Return ``images`` after each chosen image's adjustments in its own order."""
        for position in range(4):
            here = params.order[:, position]
            # Brightness, contrast and saturation are torchvision's blends clamp(f x + (1 - f) other) with black,
            # the mean grey and the grey image: one blend per position serves every image's own choice, and a
            # factor of 1 (hue here, or not jittered) leaves an image exactly unchanged.
            blended = params.applied & (here < 3)
            factor = torch.where(blended, params.factors.gather(1, here.clamp(max=2)[:, None])[:, 0], 1.0)
            gray = rgb_to_grayscale(images)
            mean = gray.mean(dim=(-2, -1), keepdim=True)
            other = torch.where((here == 2)[:, None, None, None], gray, (here == 1)[:, None, None, None] * mean)
            # lerp is (1 - f) other + f x in one pass, and exactly x at f = 1.
            images = torch.lerp(other, images, factor[:, None, None, None]).clamp_(0.0, 1.0)
            if self.ranges[3] is not None:
                # The hue round trip is not an exact identity at a zero shift: only the chosen images take it.
                rows = (params.applied & (here == 3)).nonzero()[:, 0]
                if len(rows):
                    images = images.index_copy(0, rows, shift_hue(images[rows], params.factors[rows, 3]))
        return images


def shift_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Return RGB ``images`` [N, 3, H, W] with their HSV hue rotated by ``shift`` [N] turns (torchvision's adjust_hue).

    Value (max) and chroma (max - min) are kept; the hue in sixths of a turn comes from the maximal channel as in
    torchvision's ``_rgb_to_hsv`` (red wins ties, then green), and the rotated colour from the HSV-to-RGB formula
    ``V - C * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n + 6 h) mod 6``.
    """
    red, green, blue = images.unbind(dim=-3)
    minimum, maximum = torch.aminmax(images, dim=-3)
    chroma = maximum - minimum
    divisor = torch.where(chroma > 0, chroma, 1.0)
    hue = torch.where(
        maximum == red,
        (green - blue) / divisor,
        torch.where(maximum == green, (blue - red) / divisor + 2.0, (red - green) / divisor + 4.0),
    )
    hue = torch.remainder(hue + 6.0 * shift[:, None, None], 6.0)  # [N, H, W] in [0, 6)
    offsets = torch.tensor(HUE_SECTOR_OFFSETS, device=images.device, dtype=images.dtype)[:, None, None]
    sector = torch.remainder(offsets + hue[:, None], 6.0)  # [N, 3, H, W]
    weight = torch.minimum(sector, 4.0 - sector).clamp(0.0, 1.0)
    return maximum[:, None] - chroma[:, None] * weight


class BatchedGrayscale(BatchedStep):
    """Grayscale (three equal channels) with probability p per image: parameters ``[N]`` bool."""

    def __init__(self, step: Grayscale) -> None:
        self.step = step

    def sample(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return which images become grayscale."""
        return _chance(images.shape[0], self.step.p, generator, images.device)

    def apply(self, images: Tensor, params: Tensor) -> Tensor:
        """Return ``images`` with the chosen ones replaced by their luma in all three channels."""
        return torch.where(params[:, None, None, None], rgb_to_grayscale(images).expand_as(images), images)


@dataclass(frozen=True)
class BlurParams:
    """Per-image blur: applied ``[N]`` bool and sigma ``[N]``."""

    applied: Tensor
    sigma: Tensor


class BatchedBlur(BatchedStep):
    """Gaussian blur with probability p, sigma uniform in the recipe's range, kernel side from the image side."""

    def __init__(self, step: GaussianBlur, kernel_size: int) -> None:
        self.step, self.kernel_size = step, kernel_size

    def sample(self, images: Tensor, generator: torch.Generator) -> BlurParams:
        """Return which images are blurred and each image's sigma."""
        count, device = images.shape[0], images.device
        applied = _chance(count, self.step.p, generator, device)
        return BlurParams(applied, _uniform((count,), *self.step.sigma, generator, device).float())

    def apply(self, images: Tensor, params: BlurParams) -> Tensor:
        """Return ``images`` with the chosen ones blurred (reflect border, as torchvision)."""
        rows = params.applied.nonzero()[:, 0]
        if not len(rows):
            return images
        sigma = params.sigma[rows, None].expand(-1, 2)
        blurred = gaussian_blur2d(images[rows], self.kernel_size, sigma, border_type="reflect")
        return images.index_copy(0, rows, blurred)


class BatchedResizeCenterCrop(BatchedStep):
    """The evaluation geometry, bit-exact with PIL: resize the shorter side, then centre crop (no parameters)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.resize = eval_resize_side(size)

    def sample(self, images: Tensor, generator: torch.Generator) -> None:
        """Return nothing: the step is deterministic."""
        return None

    def apply(self, images: Tensor, params: None) -> Tensor:
        """Return the centre size x size of ``images`` resized (shorter side to ``resize``) in PIL's arithmetic."""
        height, width = images.shape[-2:]
        # torchvision's output size: the shorter side to `resize`, the longer one scaled and truncated.
        if width <= height:
            new_h, new_w = int(self.resize * height / width), self.resize
        else:
            new_h, new_w = self.resize, int(self.resize * width / height)
        top, left = int(round((new_h - self.size) / 2.0)), int(round((new_w - self.size) / 2.0))
        if (new_h, new_w) == (height, width):
            return images[..., top : top + self.size, left : left + self.size]
        whole = torch.zeros(1, dtype=torch.long, device=images.device)
        rows = resample_weights(whole, whole + height, height, new_h)[0, top : top + self.size]
        columns = resample_weights(whole, whole + width, width, new_w)[0, left : left + self.size]
        rows, columns = _fixed_point(rows), _fixed_point(columns)
        pixels = (images.double() * 255).round()
        horizontal = _clip8(pixels @ columns.T)
        return _clip8(rows @ horizontal).to(images.dtype).mul(UINT8_SCALE)


def batched_step(step: Step, size: int, blur: bool) -> BatchedStep | None:
    """Return the batched executor of one recipe step for images of side ``size`` (None for a blur switched off)."""
    if isinstance(step, RandomResizedCrop):
        return BatchedResizedCrop(step, size)
    if isinstance(step, HorizontalFlip):
        return BatchedFlip(step)
    if isinstance(step, ColorJitter):
        return BatchedColorJitter(step)
    if isinstance(step, Grayscale):
        return BatchedGrayscale(step)
    if isinstance(step, GaussianBlur):
        return BatchedBlur(step, blur_kernel_size(size)) if blur else None
    if isinstance(step, ResizeCenterCrop):
        return BatchedResizeCenterCrop(size)
    raise TypeError(f"unknown view step {step!r}")


class BatchedSteps:
    """Several recipe steps in order, and the normalisation that ends every view."""

    def __init__(self, steps: tuple[Step, ...], size: int, data_cfg: DataConfig) -> None:
        blur = blur_enabled(data_cfg)
        self.steps = [executor for step in steps if (executor := batched_step(step, size, blur)) is not None]
        self.mean, self.std = normalization(data_cfg)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return ``images`` after every step, each image with its own parameters."""
        for step in self.steps:
            images = step(images, generator)
        return images

    def normalise(self, images: Tensor) -> Tensor:
        """Return ``images`` in [0, 1] normalised by the data source's mean and std, float32."""
        mean = torch.tensor(self.mean, device=images.device, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.std, device=images.device, dtype=torch.float32)[:, None, None]
        return (images.float() - mean) / std


class BatchedView:
    """A plain recipe on a batch: normalised float32 ``[B, 3, S, S]``."""

    def __init__(self, recipe: ViewRecipe, data_cfg: DataConfig) -> None:
        self.steps = BatchedSteps(recipe.steps, recipe.side(data_cfg.image_size), data_cfg)

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return the view of every image of the float batch ``images`` in [0, 1]."""
        return self.steps.normalise(self.steps(images, generator))


class BatchedPatchView:
    """A view plus patches cut from its geometry before colour (DSCL+PBSD's query), batched."""

    def __init__(self, recipe: ViewRecipe, data_cfg: DataConfig) -> None:
        if recipe.patches is None:
            raise ValueError("BatchedPatchView needs a recipe with patches")
        self.patches = recipe.patches
        self.image_size = data_cfg.image_size
        self.patch_size = self.patches.size if self.patches.size is not None else default_patch_size(self.image_size)
        self.geometry = BatchedSteps(recipe.geometry, self.image_size, data_cfg)
        self.query_colour = BatchedSteps(recipe.colour, self.image_size, data_cfg)
        self.patch_colour = BatchedSteps(self.patches.steps, self.patch_size, data_cfg)

    def sample_boxes(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """Return ``[count, L, 4]`` boxes (x1, y1, x2, y2) with ``PatchView.sample_boxes``'s law, float32."""
        size, shape = self.image_size, (count, self.patches.count)
        area = _uniform(shape, *self.patches.scale, generator, device).float() * size**2
        log_low, log_high = math.log(self.patches.ratio[0]), math.log(self.patches.ratio[1])
        ratio = _uniform(shape, log_low, log_high, generator, device).float().exp()
        width = torch.sqrt(area * ratio).round().clamp(1, size)
        height = torch.sqrt(area / ratio).round().clamp(1, size)
        left = _below(size - width.long() + 1, generator).float()
        top = _below(size - height.long() + 1, generator).float()
        return torch.stack([left, top, left + width, top + height], dim=-1)

    def crop_patches(self, geometry: Tensor, boxes: Tensor) -> Tensor:
        """Return ``[B, L, 3, P, P]``: each box of each image resampled to P x P with PIL's bilinear filter."""
        count, patches = boxes.shape[:2]
        flat = boxes.long().reshape(-1, 4)
        size, patch = self.image_size, self.patch_size
        rows = resample_weights(flat[:, 1], flat[:, 3] - flat[:, 1], size, patch).to(geometry.dtype)
        columns = resample_weights(flat[:, 0], flat[:, 2] - flat[:, 0], size, patch).to(geometry.dtype)
        shape = (count, patches, patch, size)
        return _resample(geometry[:, None], rows.reshape(shape), columns.reshape(shape))

    def __call__(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Return {"image": [B, 3, S, S], "patches": [B, L, 3, P, P], "boxes": [B, L, 4] in view pixels}."""
        geometry = self.geometry(images, generator)
        boxes = self.sample_boxes(images.shape[0], generator, images.device)
        patches = self.crop_patches(geometry, boxes)
        count, number = patches.shape[:2]
        coloured = self.patch_colour(patches.flatten(0, 1), generator)
        image = self.query_colour.normalise(self.query_colour(geometry, generator))
        patches = self.patch_colour.normalise(coloured).unflatten(0, (count, number))
        return {"image": image, "patches": patches, "boxes": boxes}


class BatchedGridView:
    """A view cut into a grid of half-overlapping patches, each augmented on its own (CPC v2's input), batched."""

    def __init__(self, recipe: ViewRecipe, data_cfg: DataConfig) -> None:
        if recipe.grid is None:
            raise ValueError("BatchedGridView needs a recipe with a patch grid")
        self.settings = recipe.grid
        self.cells = grid_cells(data_cfg.image_size, recipe.grid.grid)
        self.patch_size = int(self.cells[0, 2] - self.cells[0, 0])
        self.view = BatchedView(ViewRecipe(recipe.steps), data_cfg)

    def sample_boxes(self, count: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """Return ``[count, G*G, 4]`` random square sub-boxes (x1, y1, x2, y2), one inside every grid cell."""
        cells = self.cells.to(device)
        shape = (count, len(cells))
        side = self.patch_size * _uniform(shape, *self.settings.crop_scale, generator, device).float().sqrt()
        left = cells[:, 0] + torch.rand(shape, generator=generator, device=device) * (self.patch_size - side)
        top = cells[:, 1] + torch.rand(shape, generator=generator, device=device) * (self.patch_size - side)
        return torch.stack([left, top, left + side, top + side], dim=-1)

    def augment(self, views: Tensor, boxes: Tensor, generator: torch.Generator) -> Tensor:
        """Return ``[B, G*G, 3, P, P]``: the boxes of the normalised ``views``, each flipped and channel-dropped."""
        count, cells = boxes.shape[:2]
        size, total = self.patch_size, count * cells
        patches = roi_align(views, list(boxes), output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
        flip = _chance(total, self.settings.flip, generator, views.device)
        patches = torch.where(flip[:, None, None, None], patches.flip(-1), patches)
        drop = _chance(total, self.settings.channel_drop, generator, views.device)
        channel = torch.randint(3, (total,), generator=generator, device=views.device)
        kept = torch.nn.functional.one_hot(channel, 3).to(patches.dtype)
        mask = torch.where(drop[:, None], kept, torch.ones_like(kept))
        return (patches * mask[:, :, None, None]).unflatten(0, (count, cells))

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Return the augmented patches ``[B, G*G, 3, P, P]`` of one view of every image, row by row."""
        views = self.view(images, generator)
        return self.augment(views, self.sample_boxes(images.shape[0], generator, images.device), generator)


def build_batched_view(recipe: ViewRecipe, data_cfg: DataConfig) -> BatchedView | BatchedPatchView | BatchedGridView:
    """Return the batched executor of ``recipe`` for this data config."""
    if not isinstance(recipe, ViewRecipe):
        raise TypeError(f"build_batched_view expects a ViewRecipe, got {type(recipe).__name__}")
    if recipe.patches is not None:
        return BatchedPatchView(recipe, data_cfg)
    if recipe.grid is not None:
        return BatchedGridView(recipe, data_cfg)
    return BatchedView(recipe, data_cfg)


class BatchedViews:
    """Every named view of a uint8 batch, e.g. {"query": strong, "key": weak}, made on the batch's device."""

    def __init__(self, recipes: Mapping[str, ViewRecipe], data_cfg: DataConfig) -> None:
        if not recipes:
            raise ValueError("BatchedViews needs at least one view, got none")
        self.views = {name: build_batched_view(recipe, data_cfg) for name, recipe in recipes.items()}

    def __call__(self, images: Tensor, generator: torch.Generator) -> dict[str, Any]:
        """Return {view name: that view of every image} for uint8 ``images`` [B, 3, H, W]."""
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"batched views take uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        scaled = images.float().mul(UINT8_SCALE)
        return {name: view(scaled, generator) for name, view in self.views.items()}
