"""Registry of pretraining methods by name; the built-ins and plugins register themselves when first looked up."""

from __future__ import annotations

from pipeline.config import ExperimentConfig
from pipeline.method_configs import load_plugins, method_config_class
from pipeline.methods.base import Method
from pipeline.methods.context import ActorSpec, Batch, EpochContext, EpochReport, MethodContext, StepInfo

_REGISTRY: dict[str, type[Method]] = {}


def register_method(method_class: type[Method]) -> type[Method]:
    """Return ``method_class`` after registering it under its ``name`` (class decorator); its params must exist."""
    method_config_class(method_class.name)
    if method_class.name in _REGISTRY and _REGISTRY[method_class.name] is not method_class:
        raise ValueError(f"method name '{method_class.name}' is registered twice")
    _REGISTRY[method_class.name] = method_class
    return method_class


def method_names() -> list[str]:
    """Return the registered method names, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """Return the method class registered as ``name``."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method '{name}'; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_method(config: ExperimentConfig, num_classes: int, rank: int = 0, world_size: int = 1) -> Method:
    """Return the configured method, built for ``rank`` of ``world_size`` with its batch-norm mode resolved."""
    method_class = get_method(config.method.name)
    batch_norm = method_class.batch_norm(config, world_size)
    return method_class(MethodContext(config, rank, world_size, num_classes, batch_norm))


def _load_builtins() -> None:
    """Import the built-in method modules and the ``PIPELINE_PLUGINS`` modules so that they register themselves."""
    from pipeline.methods import ascl, cpc, dim, dscl, hcsc, moco, selfcon, supcon  # noqa: F401

    load_plugins()


__all__ = [
    "ActorSpec",
    "Batch",
    "EpochContext",
    "EpochReport",
    "Method",
    "MethodContext",
    "StepInfo",
    "build_method",
    "get_method",
    "method_names",
    "register_method",
]
