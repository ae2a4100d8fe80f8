"""CPC v2's parameters (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.methods.registry import MethodConfig, register_params
from pipeline.section import ordered_fraction


@register_params
class CpcConfig(MethodConfig):
    """CPC v2 parameters: the patch grid and its per-patch augmentation, the context network, offsets and directions."""

    name: Literal["cpc"] = "cpc"
    grid: int = Field(7, ge=3)
    skip_steps: int = Field(2, ge=0)
    steps: int = Field(3, ge=1)
    target_dim: int | None = Field(64, ge=1)
    emb_scale: float = Field(0.1, gt=0)
    directions: list[Literal["down", "up", "right", "left"]] = ["down"]
    context_dim: int | None = Field(None, ge=1)
    context_blocks: int = Field(4, ge=1)
    norm: Literal["layer", "batch"] = "layer"
    patch_crop_scale: tuple[float, float] = (0.5, 1.0)
    patch_flip: float = Field(0.5, ge=0, le=1)
    channel_drop: float = Field(1.0, ge=0, le=1)

    @field_validator("patch_crop_scale")
    @classmethod
    def _ordered_fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        return ordered_fraction(value)

    @field_validator("directions")
    @classmethod
    def _distinct_directions(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"must name at least one direction, each once, got {value}")
        return value

    @model_validator(mode="after")
    def _offsets_fit_the_grid(self) -> CpcConfig:
        if not self.skip_steps < self.steps < self.grid:
            raise ValueError(
                f"need skip_steps < steps < grid (the predicted offsets are skip_steps + 1 .. steps rows ahead), "
                f"got skip_steps {self.skip_steps}, steps {self.steps}, grid {self.grid}"
            )
        return self
