"""Every method's parameters: torch-free pydantic classes selected by ``method.name``.

This module imports nothing but pydantic (and the section base), so validating a config (a typo
in a ``--set`` key, a grid of 200 points) never pays for torch or a method's networks. A built-in
method adds its class here with ``@register_params``; ``pipeline.methods`` registers the method
itself under the same name. Methods kept outside the package live in modules named by the
``PIPELINE_PLUGINS`` environment variable (comma-separated), imported on first lookup in every
process, workers included; such a module registers both its parameter class and its method.
"""

from __future__ import annotations

import importlib
import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.section import Section


class MethodConfig(Section):
    """Base of every method's parameters; ``name`` selects the method (and this class)."""

    name: str


_PARAMS: dict[str, type[MethodConfig]] = {}
PLUGINS_ENV = "PIPELINE_PLUGINS"


def plugin_modules() -> list[str]:
    """Return the module names listed in ``PIPELINE_PLUGINS`` (empty when unset)."""
    return [name.strip() for name in os.environ.get(PLUGINS_ENV, "").split(",") if name.strip()]


def load_plugins() -> None:
    """Import every ``PIPELINE_PLUGINS`` module (each registers its methods); raise ValueError naming one that fails."""
    for name in plugin_modules():
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"{PLUGINS_ENV} names module {name!r}, which cannot be imported: {exc}") from None


def register_params(config_class: type[MethodConfig]) -> type[MethodConfig]:
    """Return ``config_class`` after registering it under the default of its ``name`` field (class decorator)."""
    name = config_class.model_fields["name"].default
    if not isinstance(name, str) or not name:
        raise ValueError(f"{config_class.__name__} needs a default method name, e.g. name: Literal['x'] = 'x'")
    if name in _PARAMS and _PARAMS[name] is not config_class:
        raise ValueError(f"method name '{name}' has two parameter classes")
    _PARAMS[name] = config_class
    return config_class


def params_names() -> list[str]:
    """Return the method names that have a parameter class, sorted."""
    load_plugins()
    return sorted(_PARAMS)


def method_config_class(name: str) -> type[MethodConfig]:
    """Return the parameter class of method ``name``; raise ValueError listing the known names."""
    if name not in _PARAMS:
        load_plugins()
    if name not in _PARAMS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(sorted(_PARAMS))}")
    return _PARAMS[name]


@register_params
class MocoConfig(MethodConfig):
    """MoCo v2 parameters (official defaults for ImageNet)."""

    name: Literal["moco"] = "moco"
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(65536, ge=1)
    momentum: float = Field(0.999, ge=0, le=1)
    momentum_schedule: Literal["constant", "cosine"] = "constant"


@register_params
class SupConConfig(MethodConfig):
    """SupCon parameters (official CIFAR recipe)."""

    name: Literal["supcon"] = "supcon"
    temperature: float = Field(0.1, gt=0)
    base_temperature: float = Field(0.07, gt=0)


@register_params
class SimCLRConfig(SupConConfig):
    """SimCLR parameters (the SupCon repository's SimCLR recipe)."""

    name: Literal["simclr"] = "simclr"  # type: ignore[assignment]
    temperature: float = Field(0.5, gt=0)


@register_params
class SelfConConfig(SupConConfig):
    """SelfCon parameters (official CIFAR recipe): one fc exit after stage 2, SupCon temperatures."""

    name: Literal["selfcon"] = "selfcon"  # type: ignore[assignment]
    variant: Literal["S", "M", "SU", "MU"] = "S"
    exits: list[Literal["layer1", "layer2", "layer3"]] = Field(default_factory=lambda: ["layer2"], min_length=1)
    exit_type: Literal["fc", "same"] = "fc"


@register_params
class SupConSConfig(SupConConfig):
    """SupCon-S (SelfCon's single-view baseline): the backbone alone, one view, anchors without positives dropped."""

    name: Literal["supcon_s"] = "supcon_s"  # type: ignore[assignment]


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


def ordered_fraction(value: tuple[float, float]) -> tuple[float, float]:
    """Return ``value`` if it is an area-fraction range 0 < min <= max <= 1; raise ValueError otherwise."""
    if not 0 < value[0] <= value[1] <= 1:
        raise ValueError(f"must satisfy 0 < min <= max <= 1, got {list(value)}")
    return value


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
    clustering: ClusteringConfig = ClusteringConfig()

    @field_validator("hierarchy")
    @classmethod
    def _shrinking_levels(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"every level needs at least one prototype, got {value}")
        if any(upper >= lower for lower, upper in zip(value, value[1:], strict=False)):
            raise ValueError(f"levels must shrink from the finest (first) up, got {value}")
        return value


@register_params
class DimConfig(MethodConfig):
    """Deep InfoMax (local–global) parameters: estimator, the stage whose map gives the local features, views."""

    name: Literal["dim"] = "dim"
    estimator: Literal["infonce", "jsd"] = "infonce"
    local_stage: Literal["layer1", "layer2", "layer3"] = "layer3"
    local_hidden_dim: int | None = Field(None, ge=1)
    two_view: bool = False


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
