"""The method registry: each method lives in its family package, found on disk; its name is written once."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest

from pipeline.methods import (
    Method,
    factory,
    get_method,
    method_config_class,
    method_names,
    params_names,
    register_method,
    registry,
)
from pipeline.methods.registry import MethodConfig, families, register_params

METHODS_DIR = Path(__file__).resolve().parents[2] / "pipeline" / "methods"


def test_families_are_the_folders_that_hold_params_and_method() -> None:
    folders = sorted(path.parent.name for path in METHODS_DIR.glob("*/method.py"))
    assert families() == folders
    assert all((METHODS_DIR / family / "params.py").is_file() for family in folders)


def test_every_method_and_its_parameters_live_in_one_family() -> None:
    assert method_names() == params_names()
    # Plugin methods other tests registered (tests.support.probe_method) live outside the package.
    built_in = [name for name in method_names() if get_method(name).__module__.startswith("pipeline.")]
    assert {"moco", "ascl", "hcsc", "dscl", "selfcon", "supcon", "dim", "cpc"} <= set(built_in)
    for name in built_in:
        method_class, params_class = get_method(name), method_config_class(name)
        family = method_class.__module__.split(".")[2]
        assert method_class.__module__ == f"pipeline.methods.{family}.method", name
        assert params_class.__module__ == f"pipeline.methods.{family}.params", name
        assert method_class.name == params_class.model_fields["name"].default == name


def test_register_method_takes_the_name_of_its_registered_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    # Registered on copies of the tables, so that no other test sees these methods.
    monkeypatch.setattr(registry, "_PARAMS", dict(registry._PARAMS))
    monkeypatch.setattr(factory, "_METHODS", dict(factory._METHODS))

    @register_params
    class ShadowConfig(MethodConfig):
        """Parameters of a method registered by this test only."""

        name: Literal["registry_test_shadow"] = "registry_test_shadow"

    @register_method(ShadowConfig)
    class Shadow(Method[ShadowConfig]):
        """A method class that is never built."""

    assert Shadow.name == "registry_test_shadow" and get_method("registry_test_shadow") is Shadow

    class Unregistered(MethodConfig):
        """Parameters nobody registered."""

        name: Literal["registry_test_unregistered"] = "registry_test_unregistered"

    with pytest.raises(ValueError, match="Unregistered is not a registered parameter class"):
        register_method(Unregistered)
    with pytest.raises(ValueError, match="method name 'registry_test_shadow' is registered twice"):
        register_method(ShadowConfig)(type("Other", (Shadow,), {}))


def test_the_interface_names_load_on_first_use_and_unknown_names_fail() -> None:
    import pipeline.methods

    assert pipeline.methods.Method is Method
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        pipeline.methods.Nope  # noqa: B018
