"""SelfCon's parameters (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.registry import register_params
from pipeline.methods.supcon.params import SupConConfig


@register_params
class SelfConConfig(SupConConfig):
    """SelfCon parameters (official CIFAR recipe): one fc exit after stage 2, SupCon temperatures."""

    name: Literal["selfcon"] = "selfcon"  # type: ignore[assignment]
    variant: Literal["S", "M", "SU", "MU"] = "S"
    exits: list[Literal["layer1", "layer2", "layer3"]] = Field(default_factory=lambda: ["layer2"], min_length=1)
    exit_type: Literal["fc", "same"] = "fc"
