"""Deep InfoMax's parameters (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.methods.registry import MethodConfig, register_params


@register_params
class DimConfig(MethodConfig):
    """Deep InfoMax (local–global) parameters: estimator, the stage whose map gives the local features, views."""

    name: Literal["dim"] = "dim"
    estimator: Literal["infonce", "jsd"] = "infonce"
    local_stage: Literal["layer1", "layer2", "layer3"] = "layer3"
    local_hidden_dim: int | None = Field(None, ge=1)
    two_view: bool = False
