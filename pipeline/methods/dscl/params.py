"""The parameters of SCL and DSCL, with PBSD's (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.methods.moco.params import MocoConfig
from pipeline.methods.registry import register_params
from pipeline.section import Section, ordered_fraction


class PbsdConfig(Section):
    """Patch-based self-distillation: patches per query image, their area range, and the loss weight λ."""

    enabled: bool = False
    weight: float = Field(1.5, ge=0)
    num_patches: int = Field(5, ge=1)
    scale: tuple[float, float] = (0.05, 0.6)

    @field_validator("scale")
    @classmethod
    def _ordered_fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        return ordered_fraction(value)


class DsclPbsdConfig(PbsdConfig):
    """PBSD as DSCL ships it: on (a class of its own so that ``--set method.pbsd.weight=2`` keeps it on)."""

    enabled: bool = True


@register_params
class SclConfig(MocoConfig):
    """SCL, DSCL's baseline (official recipe): supervised contrast with a labelled queue and uniform weights."""

    name: Literal["scl"] = "scl"  # type: ignore[assignment]
    temperature: float = Field(0.07, gt=0)
    pbsd: PbsdConfig = PbsdConfig()
    # global: each query is contrasted with the queries and keys of every worker (one worker holding the
    # global batch); worker: with its own worker's only, as the official DDP code does.
    contrast_scope: Literal["global", "worker"] = "global"


@register_params
class DsclConfig(SclConfig):
    """DSCL + PBSD (official long-tailed recipe): the own key weighs alpha, the class positives share 1 - alpha."""

    name: Literal["dscl"] = "dscl"  # type: ignore[assignment]
    alpha: float = Field(1 / 9, ge=0, le=1)
    pbsd: DsclPbsdConfig = DsclPbsdConfig()
