"""MoCo v2's parameters and multi-crop's local crops (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.methods.registry import MethodConfig, register_params
from pipeline.section import Section, ordered_fraction


class LocalCrop(Section):
    """One group of multi-crop's local views: ``count`` crops of area fraction in ``scale``, resized to ``size`` px.

    Each is the method's query recipe with this crop in place of its own, at its own side; they are
    encoded by the online encoder as extra queries (``docs/methods.md``, Multi-crop).
    """

    size: int = Field(ge=8)
    scale: tuple[float, float]
    count: int = Field(1, ge=1)

    @field_validator("scale")
    @classmethod
    def _fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        return ordered_fraction(value)


@register_params
class MocoConfig(MethodConfig):
    """MoCo v2 parameters (official defaults for ImageNet); ``local_crops`` adds multi-crop's local views (none)."""

    name: Literal["moco"] = "moco"
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(65536, ge=1)
    momentum: float = Field(0.999, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "constant"
    local_crops: list[LocalCrop] = Field(default_factory=list)

    @property
    def num_local_crops(self) -> int:
        """Return how many local views each image gets."""
        return sum(group.count for group in self.local_crops)
