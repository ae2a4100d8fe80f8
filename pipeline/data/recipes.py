"""Declarative view recipes: what a view does to an image, as plain data.

A recipe is an ordered tuple of steps (crop, flip, colour jitter, grayscale, blur, or the
deterministic evaluation resize) plus, optionally, patches cut from the view's geometry or a grid of
overlapping patches cut from the finished view. It holds
numbers only, so any backend can execute it: today ``pipeline.data.views`` runs it per image with
torchvision; a batched GPU backend can run the same recipe later. The data layer knows no method:
methods declare their views as recipes (``pipeline.methods.augmentations`` holds the official ones).
"""

from __future__ import annotations

from dataclasses import dataclass

Range = tuple[float, float]
DEFAULT_RATIO: Range = (3.0 / 4.0, 4.0 / 3.0)


def _check_range(name: str, value: Range, low: float, high: float) -> None:
    """Raise ValueError naming ``name`` unless ``low <= value[0] <= value[1] <= high``."""
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} must be (low, high) with {low} <= low <= high <= {high}, got {value!r}")


def _check_probability(name: str, p: float) -> None:
    """Raise ValueError naming ``name`` unless ``0 <= p <= 1``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")


@dataclass(frozen=True)
class RandomResizedCrop:
    """Crop a random area fraction ``scale`` with log-uniform aspect ``ratio``, resized to the image size."""

    scale: Range = (0.2, 1.0)
    ratio: Range = DEFAULT_RATIO

    def __post_init__(self) -> None:
        _check_range("crop scale", self.scale, 1e-6, 1.0)
        _check_range("crop ratio", self.ratio, 1e-6, float("inf"))


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror the image left-right with probability ``p``."""

    p: float = 0.5

    def __post_init__(self) -> None:
        _check_probability("flip p", self.p)


@dataclass(frozen=True)
class ColorJitter:
    """Jitter brightness, contrast, saturation (factors in 1 ± strength) and hue (± shift), with probability ``p``."""

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p: float = 0.8

    def __post_init__(self) -> None:
        _check_probability("colour jitter p", self.p)
        if min(self.brightness, self.contrast, self.saturation) < 0 or not 0 <= self.hue <= 0.5:
            raise ValueError(f"colour jitter strengths must be >= 0 and hue in [0, 0.5], got {self!r}")


@dataclass(frozen=True)
class Grayscale:
    """Convert to grayscale (three equal channels) with probability ``p``."""

    p: float = 0.2

    def __post_init__(self) -> None:
        _check_probability("grayscale p", self.p)


@dataclass(frozen=True)
class GaussianBlur:
    """Blur with sigma uniform in ``sigma`` with probability ``p``, where ``data.blur`` allows (by default >= 64 px)."""

    sigma: Range = (0.1, 2.0)
    p: float = 0.5

    def __post_init__(self) -> None:
        _check_probability("blur p", self.p)
        _check_range("blur sigma", self.sigma, 1e-6, float("inf"))


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Deterministic evaluation geometry: resize (ImageNet's 256/224 ratio from 64 px on), then centre crop."""


Step = RandomResizedCrop | HorizontalFlip | ColorJitter | Grayscale | GaussianBlur | ResizeCenterCrop
GEOMETRY_STEPS = (RandomResizedCrop, HorizontalFlip, ResizeCenterCrop)


@dataclass(frozen=True)
class Patches:
    """Patches cut from a view's geometry before its colour steps (PBSD students).

    ``count`` boxes per image with area fraction uniform in ``scale`` and log-uniform aspect
    ``ratio``, each resized to ``size`` px (None: 64 px at 224 px input, proportionally smaller,
    at least 8) and then given the colour ``steps``.
    """

    count: int = 5
    scale: Range = (0.05, 0.6)
    ratio: Range = DEFAULT_RATIO
    size: int | None = None
    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"patch count must be a positive integer, got {self.count!r}")
        _check_range("patch scale", self.scale, 1e-6, 1.0)
        _check_range("patch ratio", self.ratio, 1e-6, float("inf"))
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"patch size must be a positive integer or None, got {self.size!r}")
        geometric = [type(step).__name__ for step in self.steps if isinstance(step, GEOMETRY_STEPS)]
        if geometric:
            raise ValueError(f"patch steps are colour steps only; got geometry steps {geometric}")


@dataclass(frozen=True)
class PatchGrid:
    """A ``grid`` x ``grid`` grid of overlapping square patches cut from the finished view (CPC's input).

    Patches have side 2S / (grid + 1) and stride half of it (50% overlap) for a view of side S. Each
    patch is then augmented on its own: a random square sub-crop of area fraction in ``crop_scale``
    resized back to the patch side, a horizontal flip with probability ``flip``, and, with probability
    ``channel_drop``, two of its three colour channels dropped (set to the normalised mean, 0).
    """

    grid: int = 7
    crop_scale: Range = (0.5, 1.0)
    flip: float = 0.5
    channel_drop: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 2:
            raise ValueError(f"patch grid must be an integer of at least 2, got {self.grid!r}")
        _check_range("patch grid crop_scale", self.crop_scale, 1e-6, 1.0)
        _check_probability("patch grid flip", self.flip)
        _check_probability("patch grid channel_drop", self.channel_drop)


def grid_patch_size(image_size: int, grid: int) -> int:
    """Return the patch side of a ``grid`` x ``grid`` grid with 50% overlap over a view of side ``image_size``."""
    side, rest = divmod(2 * image_size, grid + 1)
    if rest or side % 2 or side < 2:
        raise ValueError(
            f"a {grid}x{grid} patch grid with 50% overlap needs an even whole patch side 2 * {image_size} / "
            f"{grid + 1}, got {2 * image_size / (grid + 1):g} (at grid 7: 32 px -> 8, 64 -> 16, 224 -> 56)"
        )
    return side


@dataclass(frozen=True)
class ViewRecipe:
    """One view: its ordered steps, optionally patches cut after its geometry steps or a patch grid, and its side.

    ``size`` is the side of the view in pixels (None: ``data.image_size``): a multi-crop's local crops are
    smaller views of the same image. Views with patches or a patch grid keep the image size.
    """

    steps: tuple[Step, ...]
    patches: Patches | None = None
    grid: PatchGrid | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a view recipe needs at least one step")
        if self.patches is not None and self.grid is not None:
            raise ValueError("a view recipe has either patches or a patch grid, not both")
        if self.size is not None:
            if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
                raise ValueError(f"view size must be a positive integer or None, got {self.size!r}")
            if self.patches is not None or self.grid is not None:
                raise ValueError("a view with patches or a patch grid keeps the image size (size None)")
            if not any(isinstance(step, RandomResizedCrop | ResizeCenterCrop) for step in self.steps):
                raise ValueError("a view with its own size needs a resizing step (a resized crop or the eval resize)")
        if self.patches is not None:
            kinds = [isinstance(step, GEOMETRY_STEPS) for step in self.steps]
            first_colour = kinds.index(False) if False in kinds else len(kinds)
            if any(kinds[first_colour:]):
                raise ValueError("a view with patches must list its geometry steps (crop, flip) before colour steps")

    @property
    def geometry(self) -> tuple[Step, ...]:
        """Return the leading geometry steps (what patches are cut from)."""
        steps = []
        for step in self.steps:
            if not isinstance(step, GEOMETRY_STEPS):
                break
            steps.append(step)
        return tuple(steps)

    @property
    def colour(self) -> tuple[Step, ...]:
        """Return the steps after the leading geometry steps."""
        return self.steps[len(self.geometry) :]

    def side(self, image_size: int) -> int:
        """Return the view's side in pixels for a run whose ``data.image_size`` is ``image_size``."""
        return self.size if self.size is not None else image_size


EVAL_VIEW = ViewRecipe((ResizeCenterCrop(),))
