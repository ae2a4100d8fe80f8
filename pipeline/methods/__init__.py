"""Pretraining methods: one package per method family, holding its parameters and its method classes.

A family folder (``moco/``, ``ascl/``, ...) holds ``params.py`` (torch-free parameter classes) and
``method.py`` (the ``Method`` subclasses). ``registry`` (torch-free) finds the families on disk and maps
names to parameter classes; ``factory`` maps them to method classes and builds one. This package
imports no torch, so that ``pipeline.config`` validates a config against the parameter classes before
torch loads; the method interface (``Method``, ``Batch``, ``get_method``, ``build_method``, ...) is
imported from its torch-side modules on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from pipeline.methods.registry import MethodConfig, method_config_class, params_names, register_params

if TYPE_CHECKING:
    from pipeline.methods.base import Method
    from pipeline.methods.context import ActorSpec, Batch, EpochContext, EpochReport, MethodContext, StepInfo
    from pipeline.methods.factory import build_method, get_method, method_names, register_method

_INTERFACE = {
    "Method": "pipeline.methods.base",
    "build_method": "pipeline.methods.factory",
    "get_method": "pipeline.methods.factory",
    "method_names": "pipeline.methods.factory",
    "register_method": "pipeline.methods.factory",
    "ActorSpec": "pipeline.methods.context",
    "Batch": "pipeline.methods.context",
    "EpochContext": "pipeline.methods.context",
    "EpochReport": "pipeline.methods.context",
    "MethodContext": "pipeline.methods.context",
    "StepInfo": "pipeline.methods.context",
}


def __getattr__(name: str) -> object:
    """Return a torch-side name (``Method``, ``Batch``, ``get_method``, ...), importing its module on first use."""
    module = _INTERFACE.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.methods' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ActorSpec",
    "Batch",
    "EpochContext",
    "EpochReport",
    "Method",
    "MethodConfig",
    "MethodContext",
    "StepInfo",
    "build_method",
    "get_method",
    "method_config_class",
    "method_names",
    "params_names",
    "register_method",
    "register_params",
]
