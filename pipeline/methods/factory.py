"""The torch half of the method registry: method classes by name, and building the configured one."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from pipeline.config import ExperimentConfig
from pipeline.methods.base import Method
from pipeline.methods.context import MethodContext
from pipeline.methods.registry import MethodConfig, load_family_modules, method_config_class

MethodT = TypeVar("MethodT", bound=type[Method])

_METHODS: dict[str, type[Method]] = {}


def register_method(params: type[MethodConfig]) -> Callable[[MethodT], MethodT]:
    """Return a class decorator registering a method class under ``params``'s name, which it takes as ``name``."""
    name = params.model_fields["name"].default
    try:
        registered = method_config_class(name)
    except ValueError:
        registered = None
    if registered is not params:
        raise ValueError(f"{params.__name__} is not a registered parameter class (decorate it with @register_params)")

    def register(method_class: MethodT) -> MethodT:
        if name in _METHODS and _METHODS[name] is not method_class:
            raise ValueError(f"method name '{name}' is registered twice")
        method_class.name = name
        _METHODS[name] = method_class
        return method_class

    return register


def method_names() -> list[str]:
    """Return the registered method names, sorted."""
    load_family_modules("method")
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """Return the method class registered as ``name``; raise ValueError listing the known names."""
    if name not in _METHODS:
        load_family_modules("method")
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}'; registered: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(config: ExperimentConfig, num_classes: int, rank: int = 0, world_size: int = 1) -> Method:
    """Return the configured method, built for ``rank`` of ``world_size`` with its batch-norm mode resolved."""
    method_class = get_method(config.method.name)
    batch_norm = method_class.batch_norm(config, world_size)
    return method_class(MethodContext(config, rank, world_size, num_classes, batch_norm))
