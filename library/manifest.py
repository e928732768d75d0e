"""What a store writes about one item: its manifest entry (`ManifestEntry`, the commit
point of a registration, library/store.py) and the encodings of an item's parts — weights
as safetensors bytes (checked finite), configs and metrics as plain JSON, the config
summary a listing shows."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import safetensors.torch
import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from library.errors import StoreError

Kind = Literal["base", "skill", "composer"]
KINDS: tuple[str, ...] = ("base", "skill", "composer")
# The config summary in a manifest entry keeps scalars and short lists of scalars, flattened
# with dotted keys, so `psec skills list` can show rank/dims/skills without opening the item.
_SUMMARY_MAX_KEYS = 40
_SUMMARY_MAX_LIST = 16


class ManifestEntry(BaseModel):
    """What the store knows about one item without opening its weights."""

    model_config = ConfigDict(frozen=True, extra="ignore", use_attribute_docstrings=True)

    name: str
    """The item's name (`library.names.check_name` rule); also its folder and entry file name."""
    kind: Kind
    """`base` (a pretrained policy), `skill` (a LoRA on a base) or `composer` (α(s) over skills)."""
    parent: str | None = None
    """Name of the base a skill or composer is built on; None for a base."""
    task_spec: dict[str, Any] | None = None
    """The task spec the item was fitted for, as plain JSON; None if not given."""
    dataset_fingerprint: str | None = None
    """Fingerprint of the dataset the item was fitted on (`tasks.dataset.fingerprint`)."""
    sha256: str
    """Hex sha256 of the bytes of `adapter_model.safetensors`; `load` refuses a mismatch."""
    size_bytes: int
    """Size of `adapter_model.safetensors` in bytes."""
    metrics: dict[str, Any] = {}
    """Evaluation results and training figures; `update_metrics` merges into it."""
    created: str
    """When the item was registered: ISO 8601, UTC, microseconds."""
    config_summary: dict[str, Any] = {}
    """Scalars and short lists from the config, flattened with dotted keys (for listings)."""


def safetensors_bytes(name: str, tensors: Mapping[str, torch.Tensor]) -> bytes:
    """Checks keys, types and finiteness, then serialises (peft's metadata: format=pt)."""
    if not isinstance(tensors, Mapping) or not tensors:
        raise StoreError(f"{name!r} has no tensors to store")
    clean: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if not isinstance(key, str) or not key:
            raise StoreError(f"tensor keys of {name!r} must be non-empty strings, got {key!r}")
        if not isinstance(t, torch.Tensor):
            raise StoreError(
                f"tensor {key!r} of {name!r} is a {type(t).__name__}, not a torch.Tensor"
            )
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise StoreError(f"tensor {key!r} of {name!r} holds NaN or inf values")
        # A copy: safetensors refuses tensors that share storage (tied or sliced weights).
        clean[key] = t.detach().to("cpu", copy=True).contiguous()
    return safetensors.torch.save(clean, metadata={"format": "pt"})


def json_ready(value: Any, where: str) -> Any:
    """`value` as plain JSON types; numpy/torch scalars unwrap, NaN/inf become null."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN
    if isinstance(value, (np.generic, np.ndarray, torch.Tensor)):
        return json_ready(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise StoreError(f"{where} has a non-string key {k!r}; JSON keys are strings")
            out[k] = json_ready(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [json_ready(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise StoreError(f"{where} is a {type(value).__name__}, which cannot be stored as JSON")


def summarise(config: dict[str, Any]) -> dict[str, Any]:
    """Scalars and short scalar lists of a config, flattened to dotted keys, capped."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= _SUMMARY_MAX_KEYS:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, list):
            if len(value) <= _SUMMARY_MAX_LIST and not any(
                isinstance(v, (dict, list)) for v in value
            ):
                out[prefix] = value
        else:
            out[prefix] = value

    walk("", config)
    return out


def entry_bytes(entry: ManifestEntry) -> bytes:
    return json.dumps(
        entry.model_dump(mode="json"), indent=2, sort_keys=True, allow_nan=False
    ).encode()


def parse_entry(data: bytes, path: str) -> ManifestEntry:
    try:
        return ManifestEntry.model_validate_json(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "entry"
        raise StoreError(f"manifest entry {path} is unreadable: {where}: {first['msg']}") from e
