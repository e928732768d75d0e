"""Config dataclasses to and from the plain dicts that stored items carry."""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, fields
from typing import Any, ClassVar, TypeVar

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


class StoredConfig:
    """A config dataclass that stored items carry as a plain dict: `to_dict`, and
    `from_dict` refusing unknown or missing fields as SpecErrors under `FIELD`."""

    FIELD: ClassVar[str]
    """The spec section the config's fields are named under in errors ("policy", ...)."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]  (subclasses are dataclasses)

    @classmethod
    def from_dict(cls: type[C], data: dict) -> C:
        """Build from a dict (e.g. a stored config); unknown or missing fields are errors."""
        return config_from_dict(cls, data, cls.FIELD)  # type: ignore[attr-defined]

