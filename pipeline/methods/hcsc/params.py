"""HCSC's parameters and its clustering settings (torch-free)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.methods.moco.params import MocoConfig
from pipeline.methods.registry import register_params
from pipeline.section import Section


class ClusteringConfig(Section):
    """Where and when HCSC's per-epoch hierarchy is computed, and the k-means settings (official: niter 20, nredo 5).

    ``overlap: false`` is the paper's behaviour (epoch e trains with the hierarchy of the weights that
    ended epoch e−1; workers wait for it). ``true`` trains epoch e with the hierarchy of the weights that
    ended epoch e−2 while the actor clusters the newer ones: one epoch of staleness, no waiting in
    steady state. ``where: actor`` extracts features in the clustering actor from the momentum
    encoder's weights; ``workers`` extracts them on the training workers, over their shards, and the
    actor only clusters.
    """

    overlap: bool = False
    where: Literal["actor", "workers"] = "actor"
    num_cpus: float = Field(0.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    niter: int = Field(20, ge=1)
    nredo: int = Field(5, ge=1)
    seed: int = 0
    batch_size: int = Field(256, ge=1)
    timeout_s: float = Field(3600.0, gt=0)


@register_params
class HcscConfig(MocoConfig):
    """HCSC parameters (official ImageNet recipe): MoCo v2 warm-up, then instance + prototype selective coding."""

    name: Literal["hcsc"] = "hcsc"  # type: ignore[assignment]
    queue_size: int = Field(16384, ge=1)
    warmup_epochs: int = Field(20, ge=0)
    hierarchy: list[int] = Field(default_factory=lambda: [3000, 2000, 1000], min_length=1)
    hierarchy_scale: Literal["off", "auto"] = "off"
    instance_selection: bool = True
    prototype_selection: bool = True
    # global: PCSC's negative prototypes are those no image of the global batch has as its positive;
    # worker: of the worker's own batch, as the official DDP code does.
    contrast_scope: Literal["global", "worker"] = "global"
    # With local crops: each local view's instance loss uses the query's selected negatives (official: on).
    selection_on_local: bool = True
    clustering: ClusteringConfig = ClusteringConfig()

    @field_validator("hierarchy")
    @classmethod
    def _shrinking_levels(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"every level needs at least one prototype, got {value}")
        if any(upper >= lower for lower, upper in zip(value, value[1:], strict=False)):
            raise ValueError(f"levels must shrink from the finest (first) up, got {value}")
        return value
