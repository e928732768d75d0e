"""Bases, skills and composers as `(config: dict, tensors: dict[str, Tensor])`.

The pair is what the store writes as `adapter_config.json` + `adapter_model.safetensors`.
A skill is written the way peft writes a LoRA adapter: peft's config fields (`peft_type`,
`r`, `lora_alpha`, `target_modules`, ...) and tensor keys without the adapter name, e.g.
`base_model.model.net.blocks.0.fc1.lora_A.weight`, so anyone who knows peft can read it.
Configs are JSON-ready (plain dicts, lists, numbers, strings).

Every `load_*` checks the whole item against its base (config dims, tensor names, tensor
shapes, finiteness) before changing anything, and raises a one-line ShapeError, DataError,
SpecError or StoreError naming what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from library.composition import AlphaConfig, Composer
from library.config import is_count
from library.critics import CriticConfig, FeasibilityConfig, FeasibilityCritic, IQLCritics
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.errors import DataError, ShapeError, SpecError, StoreError
from library.lora import LoraLinear, add_skill, lora_layers, merged_skills, skill_spec

PEFT_PREFIX = "base_model.model."
PEFT_TYPES = {"lora": "LORA", "full": "PSEC_FULL"}
"""peft_type per adapter kind; peft has no dense-ΔW adapter, so "full" says it is ours."""
_ADAPTER_PARTS = {"lora": ("lora_A", "lora_B"), "full": ("full_delta",)}


# ---------------------------------------------------------------------- checks
def _check_finite(tensors: Mapping[str, Tensor], what: str) -> None:
    for key, tensor in tensors.items():
        if not isinstance(tensor, Tensor):
            raise DataError(f"{what} entry {key} is a {type(tensor).__name__}, not a tensor")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise DataError(f"{what} tensor {key} has non-finite values")


def _check_keys(got: Mapping[str, Tensor], expected: Mapping[str, torch.Size], what: str) -> None:
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise ShapeError(f"{what} does not fit its base: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for key, shape in expected.items():
        if got[key].shape != shape:
            raise ShapeError(
                f"{what} tensor {key} is {list(got[key].shape)} but the base needs {list(shape)}"
            )


def _kind(config: Mapping, expected: tuple[str, ...]) -> str:
    if not isinstance(config, Mapping):
        raise SpecError("config", f"must be a mapping, got {type(config).__name__}")
    kind = config.get("kind")
    if kind not in expected:
        raise StoreError(f"item of kind {kind!r} is not a {' or '.join(expected)}")
    return kind


def _check_policy_dims(config: Mapping, policy: DiffusionPolicy, what: str) -> None:
    stored = PolicyConfig.from_dict(config.get("policy")).to_dict()
    base = policy.config.to_dict()
    differ = [k for k in base if stored[k] != base[k]]
    if differ:
        made = ", ".join(f"{k}={stored[k]}" for k in differ)
        have = ", ".join(f"{k}={base[k]}" for k in differ)
        raise ShapeError(f"{what} was made for a base with {made} but this base has {have}")


# ---------------------------------------------------------------------- base
def _plain_state(policy: DiffusionPolicy) -> dict[str, Tensor]:
    """The policy's own weights under skill-free names (`net.input.weight`)."""
    adapter_parts = {part for parts in _ADAPTER_PARTS.values() for part in parts}
    state = {}
    for key, value in policy.state_dict().items():
        parts = key.split(".")
        if adapter_parts & set(parts):
            continue
        state[".".join(p for p in parts if p != "base_layer")] = value
    return state


def dump_base(policy: DiffusionPolicy) -> tuple[dict, dict[str, Tensor]]:
    """A base policy (its normaliser included) without any skill that sits on it."""
    if merged_skills(policy):
        raise StoreError(f"skills {merged_skills(policy)} are merged into the base; unmerge them first")
    tensors = {k: v.detach().clone().contiguous() for k, v in _plain_state(policy).items()}
    _check_finite(tensors, "base")
    return {"kind": "base", "policy": policy.config.to_dict()}, tensors


def load_base(config: Mapping, tensors: Mapping[str, Tensor]) -> DiffusionPolicy:
    """Rebuild a base policy from `dump_base` output."""
    _kind(config, ("base",))
    cfg = PolicyConfig.from_dict(config.get("policy"))
    _check_finite(tensors, "base")
    for key in ("normalizer.mean", "normalizer.std"):
        if key not in tensors:
            raise ShapeError(f"base is missing tensor {key}")
    policy = DiffusionPolicy(cfg, StateNormalizer(tensors["normalizer.mean"], tensors["normalizer.std"]))
    expected = {k: v.shape for k, v in policy.state_dict().items()}
    _check_keys(tensors, expected, "base")
    policy.load_state_dict(dict(tensors))
    return policy


# ---------------------------------------------------------------------- skills
def _linear_paths(policy: nn.Module) -> dict[str, tuple[int, int]]:
    """(out, in) of every layer a skill attaches to, wrapped or not yet, by module path."""
    shapes: dict[str, tuple[int, int]] = {}
    wrapped: tuple[str, ...] = ()
    for path, module in policy.named_modules():
        if wrapped and path.startswith(wrapped):
            continue  # a wrapped layer's own base_layer and adapters
        if isinstance(module, LoraLinear):
            shapes[path] = (module.out_features, module.in_features)
            wrapped += (f"{path}.",)
        elif isinstance(module, nn.Linear):
            shapes[path] = (module.out_features, module.in_features)
    return shapes


def _skill_shapes(paths: Mapping[str, tuple[int, int]], kind: str, rank: int) -> dict[str, torch.Size]:
    shapes = {}
    for path, (out_f, in_f) in paths.items():
        key = f"{PEFT_PREFIX}{path}"
        if kind == "lora":
            shapes[f"{key}.lora_A.weight"] = torch.Size([rank, in_f])
            shapes[f"{key}.lora_B.weight"] = torch.Size([out_f, rank])
        else:
            shapes[f"{key}.full_delta.weight"] = torch.Size([out_f, in_f])
    return shapes


def dump_skill(
    policy: DiffusionPolicy, name: str, base_name: str | None = None
) -> tuple[dict, dict[str, Tensor]]:
    """One skill as a peft-style adapter: config and tensors keyed without the skill name."""
    spec = skill_spec(policy, name)
    layers = lora_layers(policy)
    tensors: dict[str, Tensor] = {}
    for path, layer in layers.items():
        for part in _ADAPTER_PARTS[spec.kind]:
            weight = getattr(layer, part)[name].weight
            tensors[f"{PEFT_PREFIX}{path}.{part}.weight"] = weight.detach().clone().contiguous()
    _check_finite(tensors, f"skill {name!r}")
    config = {
        "peft_type": PEFT_TYPES[spec.kind],
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "target_modules": list(layers),
        "base_model_name_or_path": base_name,
        "bias": "none",
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "inference_mode": True,
        "kind": spec.kind,
        "policy": policy.config.to_dict(),
    }
    return config, tensors


def load_skill(
    policy: DiffusionPolicy, name: str, config: Mapping, tensors: Mapping[str, Tensor]
) -> None:
    """Add skill `name` to `policy` with the stored weights; nothing changes if it does not fit."""
    kind = _kind(config, ("lora", "full"))
    _check_policy_dims(config, policy, f"skill {name!r}")
    rank = config.get("r")
    if kind == "lora" and not is_count(rank):
        raise SpecError("r", f"must be a positive integer, got {rank!r}")
    paths = _linear_paths(policy)
    targets = config.get("target_modules")
    if not isinstance(targets, list) or sorted(targets) != sorted(paths):
        raise ShapeError(
            f"skill {name!r} targets modules {targets} but the base has {list(paths)}"
        )
    _check_finite(tensors, f"skill {name!r}")
    _check_keys(tensors, _skill_shapes(paths, kind, rank), f"skill {name!r}")
    shape_args = {"rank": rank, "alpha": config.get("lora_alpha")} if kind == "lora" else {}
    add_skill(policy, name, kind=kind, **shape_args)
    with torch.no_grad():
        for path, layer in lora_layers(policy).items():
            for part in _ADAPTER_PARTS[kind]:
                getattr(layer, part)[name].weight.copy_(tensors[f"{PEFT_PREFIX}{path}.{part}.weight"])


# ---------------------------------------------------------------------- composers
def _composer_tensors(composer: Composer) -> dict[str, Tensor]:
    """θ only: the context network or the constant logits, never the policy under it."""
    return {
        k: v.detach().clone().contiguous()
        for k, v in composer.state_dict().items()
        if not k.startswith("policy.")
    }


def dump_composer(composer: Composer) -> tuple[dict, dict[str, Tensor]]:
    tensors = _composer_tensors(composer)
    _check_finite(tensors, "composer")
    config = {
        "kind": "composer",
        "skills": list(composer.skills),
        "mode": composer.mode,
        "alpha": composer.alpha_config.to_dict(),
        "policy": composer.policy.config.to_dict(),
    }
    return config, tensors


def load_composer(policy: DiffusionPolicy, config: Mapping, tensors: Mapping[str, Tensor]) -> Composer:
    """A composer over `policy`, which must already carry every skill it composes."""
    _kind(config, ("composer",))
    _check_policy_dims(config, policy, "composer")
    skills = config.get("skills")
    if not isinstance(skills, list) or not all(isinstance(s, str) for s in skills):
        raise SpecError("skills", f"must be a list of names, got {skills!r}")
    composer = Composer(policy, skills, config.get("mode"), AlphaConfig.from_dict(config.get("alpha")))
    _check_finite(tensors, "composer")
    expected = {k: v.shape for k, v in _composer_tensors(composer).items()}
    _check_keys(tensors, expected, "composer")
    composer.load_state_dict(dict(tensors), strict=False)
    return composer

# ---------------------------------------------------------------------- critics inside items
# Critics are not an item kind of their own: they belong to the task whose data they were
# fitted on and are stored inside that task's base or skill item, their tensors under the
# prefix `critics.` and their configs under the item config's `critics` key (peft ignores
# both).

CRITIC_PREFIX = "critics."
LAST_PREFIX = "last_iterate."
"""Tensors of a base or skill item that hold the last iterate beside the stored EMA."""


def build_critics(configs: dict[str, Any], normalizer: StateNormalizer
                   ) -> tuple[IQLCritics | None, FeasibilityCritic | None]:
    iql = IQLCritics(configs["iql"], normalizer) if "iql" in configs else None
    feasibility = (FeasibilityCritic(configs["feasibility"], normalizer)
                   if "feasibility" in configs else None)
    return iql, feasibility


def dump_critics(iql: IQLCritics | None, feasibility: FeasibilityCritic | None
                    ) -> dict[str, Tensor]:
    """Critic weights without the normaliser, which travels with the base."""
    tensors: dict[str, Tensor] = {}
    for name, critic in (("iql", iql), ("feasibility", feasibility)):
        if critic is None:
            continue
        for key, value in critic.state_dict().items():
            if not key.startswith("normalizer."):
                tensors[f"{CRITIC_PREFIX}{name}.{key}"] = value.detach().clone()
    return tensors


def load_critic_state(critic: torch.nn.Module, name: str, tensors: dict[str, Tensor]) -> None:
    prefix = f"{CRITIC_PREFIX}{name}."
    own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
    expected = {key for key in critic.state_dict() if not key.startswith("normalizer.")}
    if set(own) != expected:
        raise StoreError(f"stored {name} critic does not match its config: "
                         f"{sorted(set(own) ^ expected)[:3]}")
    critic.load_state_dict(own, strict=False)


def split_item(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(the item's own tensors, its critics' tensors); the last iterate kept beside an
    EMA item is in neither."""
    own = {k: v for k, v in tensors.items()
           if not k.startswith(CRITIC_PREFIX) and not k.startswith(LAST_PREFIX)}
    critics = {k: v for k, v in tensors.items() if k.startswith(CRITIC_PREFIX)}
    return own, critics


def critics_from_item(config: dict, tensors: dict[str, Tensor], normalizer: StateNormalizer
                      ) -> tuple[IQLCritics | None, FeasibilityCritic | None]:
    """The critics stored in a base or skill item (None, None if it has none)."""
    stored = config.get("critics") or {}
    configs: dict[str, Any] = {}
    if "iql" in stored:
        configs["iql"] = CriticConfig.from_dict(stored["iql"])
    if "feasibility" in stored:
        configs["feasibility"] = FeasibilityConfig.from_dict(stored["feasibility"])
    iql, feasibility = build_critics(configs, normalizer)
    if iql is not None:
        load_critic_state(iql, "iql", tensors)
    if feasibility is not None:
        load_critic_state(feasibility, "feasibility", tensors)
    return iql, feasibility


__all__ = [
    "dump_base", "load_base", "dump_skill", "load_skill", "dump_composer", "load_composer",
    "CRITIC_PREFIX", "LAST_PREFIX", "build_critics", "dump_critics", "load_critic_state",
    "split_item", "critics_from_item",
    "PEFT_PREFIX",
]
