"""The parameters of SupCon, SimCLR and SupCon-S (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.augmentations import MultiCropParams
from pipeline.methods.registry import MethodConfig, register_params


@register_params
class SupConConfig(MethodConfig, MultiCropParams):
    """SupCon parameters (official CIFAR recipe); ``local_crops`` adds multi-crop's local views (none)."""

    name: Literal["supcon"] = "supcon"
    temperature: float = Field(0.1, gt=0)
    base_temperature: float = Field(0.07, gt=0)


@register_params
class SimCLRConfig(SupConConfig):
    """SimCLR parameters (the SupCon repository's SimCLR recipe)."""

    name: Literal["simclr"] = "simclr"  # type: ignore[assignment]
    temperature: float = Field(0.5, gt=0)


@register_params
class SupConSConfig(SupConConfig):
    """SupCon-S (SelfCon's single-view baseline): the backbone alone, one view, anchors without positives dropped."""

    name: Literal["supcon_s"] = "supcon_s"  # type: ignore[assignment]
