"""The base of every config section (experiment sections and method parameters alike)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _numeric_types(annotation: Any) -> set[type]:
    """Return the int/float/bool types an annotation admits (through Optional, unions and Annotated)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _numeric_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_numeric_types(arg) for arg in typing.get_args(annotation)))
    return {annotation} & {int, float, bool}


class Section(BaseModel):
    """Base of every config section: unknown keys, silent coercions and booleans posing as numbers are rejected."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML's `true` is a Python bool, which pydantic would accept as the integer 1 (epochs=true -> 1 epoch).
        if isinstance(value, bool) and info.field_name is not None:
            admitted = _numeric_types(cls.model_fields[info.field_name].annotation)
            if admitted & {int, float} and bool not in admitted:
                raise ValueError("must be a number, not a boolean")
        return value


def ordered_fraction(value: tuple[float, float]) -> tuple[float, float]:
    """Return ``value`` if it is an area-fraction range 0 < min <= max <= 1; raise ValueError otherwise."""
    if not 0 < value[0] <= value[1] <= 1:
        raise ValueError(f"must satisfy 0 < min <= max <= 1, got {list(value)}")
    return value
