"""PSEC's algorithm in pure PyTorch: what a skill is and how skills combine.

Read in this order: `diffusion` (the base policy), `lora` (skills as adapters and their
batched composition), `composition` (α(s) and the four composition modes), then
`critics`, `weighting`, `learners` and `training`. `serialization` and `store` turn
everything into files. No Ray, YAML or gym in here.

The main names are importable from the package itself (`from library import Composer`);
they are resolved on first use so that `import library.errors` stays cheap.
"""

from importlib import import_module

_EXPORTS = {
    "OfflineData": "data",
    "PolicyConfig": "diffusion",
    "StateNormalizer": "diffusion",
    "NoisePredictor": "diffusion",
    "DiffusionPolicy": "diffusion",
    "select_action": "diffusion",
    "LoraLinear": "lora",
    "add_skill": "lora",
    "remove_skill": "lora",
    "skill_names": "lora",
    "trainable_only": "lora",
    "use_skills": "lora",
    "lora_layers": "lora",
    "merge": "lora",
    "unmerge": "lora",
    "safe_merge": "lora",
    "merged_skills": "lora",
    "skill_spec": "lora",
    "AlphaConfig": "composition",
    "ContextNet": "composition",
    "Composer": "composition",
    "dump_base": "serialization",
    "load_base": "serialization",
    "dump_skill": "serialization",
    "load_skill": "serialization",
    "dump_composer": "serialization",
    "load_composer": "serialization",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'library' has no attribute {name!r}")
    return getattr(import_module(f"library.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
