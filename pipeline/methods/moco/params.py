"""MoCo v2's parameters (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.augmentations import MultiCropParams
from pipeline.methods.registry import MethodConfig, register_params


@register_params
class MocoConfig(MethodConfig, MultiCropParams):
    """MoCo v2 parameters (official defaults for ImageNet); ``local_crops`` adds multi-crop's local views (none)."""

    name: Literal["moco"] = "moco"
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(65536, ge=1)
    momentum: float = Field(0.999, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "constant"
