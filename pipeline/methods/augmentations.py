"""The official view recipes of the methods (declarative; executed by ``pipeline.data.views``).

Sources: MoCo v2 (Chen et al. 2020, official repo), SupCon (Khosla et al. 2020, official repo),
ASCL's weak key view (crop and flip only), DSCL's key view (jitter without hue, no grayscale or
blur), PBSD's query with patches (Xuan et al. 2023) and CPC v2's patch grid (Hénaff et al. 2020). See
docs/methods.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pydantic import Field, field_validator

from pipeline.data.recipes import (
    ColorJitter,
    GaussianBlur,
    Grayscale,
    HorizontalFlip,
    Patches,
    PatchGrid,
    RandomResizedCrop,
    ViewRecipe,
)
from pipeline.section import Section, ordered_fraction

CROP = RandomResizedCrop(scale=(0.2, 1.0))
JITTER = ColorJitter(0.4, 0.4, 0.4, 0.1, p=0.8)
STRONG_COLOUR = (JITTER, Grayscale(0.2), GaussianBlur((0.1, 2.0), p=0.5))

MOCO_V2 = ViewRecipe((CROP, *STRONG_COLOUR, HorizontalFlip()))
SUPCON = ViewRecipe((CROP, HorizontalFlip(), JITTER, Grayscale(0.2)))
ASCL_WEAK = ViewRecipe((CROP, HorizontalFlip()))
DSCL_KEY = ViewRecipe((CROP, HorizontalFlip(), ColorJitter(0.4, 0.4, 0.4, 0.0, p=0.8)))


def pbsd_query(count: int = 5, scale: tuple[float, float] = (0.05, 0.6), size: int | None = None) -> ViewRecipe:
    """Return DSCL+PBSD's query: MoCo v2's view, with ``count`` patches cut before colour and given the same colour."""
    return ViewRecipe(
        (CROP, HorizontalFlip(), *STRONG_COLOUR),
        patches=Patches(count=count, scale=scale, size=size, steps=STRONG_COLOUR),
    )


def cpc_view(grid: PatchGrid) -> ViewRecipe:
    """Return CPC v2's view: a crop and flip of the image, cut into ``grid``'s patches, each augmented on its own."""
    return ViewRecipe((CROP, HorizontalFlip()), grid=grid)


class LocalCrop(Section):
    """One group of multi-crop's local views: ``count`` crops of area fraction in ``scale``, resized to ``size`` px."""

    size: int = Field(ge=8)
    scale: tuple[float, float]
    count: int = Field(1, ge=1)

    @field_validator("scale")
    @classmethod
    def _fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        return ordered_fraction(value)


class MultiCropParams(Section):
    """The ``local_crops`` parameter of methods whose class takes local views (none by default)."""

    local_crops: list[LocalCrop] = Field(default_factory=list)

    @property
    def num_local_crops(self) -> int:
        """Return how many local views each image gets."""
        return sum(group.count for group in self.local_crops)


def local_views(base: ViewRecipe, crops: Sequence[LocalCrop]) -> dict[str, ViewRecipe]:
    """Return multi-crop's local views ``local_0``, ``local_1``, ...: ``base`` with each group's crop, at its side.

    ``base``'s resized crop is replaced by one of the group's scale (aspect ratios unchanged); every
    other step is kept, in order, as HCSC's official multi-crop does with MoCo v2's recipe.
    """
    if not any(isinstance(step, RandomResizedCrop) for step in base.steps):
        raise ValueError("local crops replace the view's resized crop, and this recipe has none")
    views: dict[str, ViewRecipe] = {}
    for group in crops:
        steps = tuple(
            replace(step, scale=tuple(group.scale)) if isinstance(step, RandomResizedCrop) else step
            for step in base.steps
        )
        for _ in range(group.count):
            views[f"local_{len(views)}"] = replace(base, steps=steps, size=group.size)
    return views
