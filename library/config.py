"""Config dataclasses to and from the plain dicts that stored items carry."""

from __future__ import annotations

import math
from dataclasses import MISSING, fields
from typing import Any, TypeVar

from library.errors import SpecError

C = TypeVar("C")


def is_count(value: Any, minimum: int = 1) -> bool:
    """An int that is not a bool (YAML's `true` is not 1 step), at least `minimum`."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def is_finite_number(value: Any) -> bool:
    """An int or float that is not a bool, NaN or ±inf."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def config_from_dict(cls: type[C], data: Any, field: str) -> C:
    """Build dataclass `cls` from `data`; unknown or missing keys are SpecErrors under `field`."""
    if not isinstance(data, dict):
        raise SpecError(field, f"must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise SpecError(f"{field}.{unknown[0]}", "unknown field")
    for f in fields(cls):
        if f.default is MISSING and f.default_factory is MISSING and f.name not in data:
            raise SpecError(f"{field}.{f.name}", "missing")
    return cls(**data)
