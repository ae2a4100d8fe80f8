"""The torch-free half of the method registry: every method's parameter class by name, and where methods live.

Built-in methods are the family packages of ``pipeline.methods`` (a folder holding ``params.py`` and
``method.py``), found on disk: adding one edits no shared file. ``params.py`` registers its
parameter classes with ``@register_params`` and imports nothing but pydantic, so validating a config
(a typo in a ``--set`` key, a grid of 200 points) never pays for torch; ``method.py`` registers each
method class with ``@register_method(TheirParams)`` from ``pipeline.methods.factory``, the torch half.
Methods kept outside the package live in modules named by the ``PIPELINE_PLUGINS`` environment
variable (comma-separated), imported on first lookup in every process, workers included; such a
module registers both its parameter class and its method.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

from pipeline.section import Section

PLUGINS_ENV = "PIPELINE_PLUGINS"
PACKAGE = "pipeline.methods"


class MethodConfig(Section):
    """Base of every method's parameters; ``name`` selects the method (and this class)."""

    name: str


_PARAMS: dict[str, type[MethodConfig]] = {}


def families() -> list[str]:
    """Return the built-in method families: the sub-packages of ``pipeline.methods``, sorted."""
    folder = Path(__file__).resolve().parent
    return sorted(module.name for module in pkgutil.iter_modules([str(folder)]) if module.ispkg)


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


def load_family_modules(part: str) -> None:
    """Import ``part`` (``params`` or ``method``) of every built-in family, then the plugins."""
    for family in families():
        importlib.import_module(f"{PACKAGE}.{family}.{part}")
    load_plugins()


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
    load_family_modules("params")
    return sorted(_PARAMS)


def method_config_class(name: str) -> type[MethodConfig]:
    """Return the parameter class of method ``name``; raise ValueError listing the known names."""
    if name not in _PARAMS:
        load_family_modules("params")
    if name not in _PARAMS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(sorted(_PARAMS))}")
    return _PARAMS[name]
