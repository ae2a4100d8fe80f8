"""The parameters of ASCL and its BYOL variant (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.methods.moco.params import MocoConfig
from pipeline.methods.registry import MethodConfig, register_params


@register_params
class AsclConfig(MocoConfig):
    """ASCL parameters (official CIFAR recipe): MoCo's machinery with soft targets from the weak key's relations."""

    name: Literal["ascl"] = "ascl"  # type: ignore[assignment]
    mode: Literal["hard", "ahcl", "ascl"] = "ascl"
    num_neighbors: int = Field(1, ge=0)
    temperature: float = Field(0.1, gt=0)
    sharpen_temperature: float = Field(0.05, gt=0)
    key_augmentation: Literal["weak", "strong"] = "weak"
    queue_size: int = Field(4096, ge=1)
    momentum: float = Field(0.99, ge=0, le=1)

    @model_validator(mode="after")
    def _neighbours_fit_the_queue(self) -> AsclConfig:
        if self.num_neighbors > self.queue_size:
            raise ValueError(
                f"num_neighbors = {self.num_neighbors} exceeds queue_size = {self.queue_size} "
                f"(neighbours are chosen from the queue)"
            )
        return self


@register_params
class AsclByolConfig(MethodConfig):
    """ASCL's BYOL variant (official recipe): predictor 128-512-128, in-batch soft targets, no queue."""

    name: Literal["ascl_byol"] = "ascl_byol"
    num_neighbors: int = Field(1, ge=0)
    sharpen_temperature: float = Field(0.05, gt=0)
    key_augmentation: Literal["weak", "strong"] = "weak"
    predictor_hidden_dim: int = Field(512, ge=1)
    momentum: float = Field(0.99, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "constant"
