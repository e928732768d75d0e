"""Skills as adapters on a frozen base: LoRA (`W0 + (alpha/r)·B A`) and full-rank (`W0 + ΔW`).

The LoRA multiplier follows the official PSEC code, which adds `alpha_r · x A B` with
alpha_r = 16 used directly (not divided by the rank) and A drawn lecun-normal. In peft's
convention (`lora_alpha` / `r`) that is `lora_alpha = 16 · r`, the default here, so a stored
skill reads as an ordinary peft LoRA with scaling 16. peft's own default (alpha/r = 2 with
kaiming-uniform A) makes the effective step about 14× smaller, and a rank-8 skill then
learns far slower than full fine-tuning (docs/DEVIATIONS.md, "LoRA strength").

The layer (library/lora_layer.py) is shaped like HuggingFace peft's `tuners/lora/layer.py`:
`LoraLinear` wraps a `base_layer: nn.Linear`, and every adapter lives in `nn.ModuleDict`s
keyed by the skill name (`lora_A[name]`, `lora_B[name]`, or `full_delta[name]` for the
full-rank PSEC(MLP) baseline), so a state dict reads `net.blocks.0.fc1.lora_A.walk.weight`
as in peft. This module is the model level: adding, removing and merging skills, and
`use_skills`.

What peft lacks and this module adds: *continuous, per-sample* weights for any number of
skills. Inside `with use_skills(model, names, weights):` every wrapped layer computes

    y = W0 x + b + Σ_i w_i · s_i · B_i A_i x          (w: [k] or per sample [B, k])

in one batched pass: the active A's are stacked into one [R, in] matrix (R = Σ r_i) and the
B's into one [out, R] matrix, so a layer costs two small matmuls whatever k is, and no
weight matrix is ever materialised per sample. Stacks of frozen adapters are cached and
keyed on the parameters' `_version` counters and storage, so an in-place change (an
optimiser step, `load_state_dict`, `.to()`) invalidates them.

Outside `use_skills` a wrapped layer computes the base alone (plus any merged skills).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from library.errors import DataError, ShapeError, StoreError
from library.lora_layer import (  # noqa: F401  (KINDS, DEFAULT_SCALING, LoraLinear: re-exported)
    DEFAULT_SCALING,
    KINDS,
    ActiveSet,
    AdapterSpec,
    LoraLinear,
    adapter_spec,
    cache_mode,
    default_alpha,
)
from library.names import BASE, check_name


class _SkillPlan:
    """What `use_skills` needs of one model, worked out once: its wrapped layers and, per
    selection of skills, which weight each stacked rank column takes.

    Walking every module costs more than a whole forward pass of a small policy, and
    use_skills runs once per sampled batch, so this is kept per model (`_PLANS`) until a
    layer is wrapped or an adapter added or removed on any model.
    """

    __slots__ = ("generation", "layers", "columns", "all_ones")

    def __init__(self, generation: int, model: nn.Module):
        self.generation = generation
        """`_PLANS.generation` when the plan was made."""
        self.layers: dict[str, LoraLinear] = {
            name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}
        """Every wrapped layer, by module path, in module order."""
        self.columns: dict[tuple, _ColumnPlan] = {}
        """Column plans by (skill names, kept positions, dtype, device)."""
        self.all_ones: dict[tuple, ActiveSet | None] = {}
        """The prepared active set of every skill at weight 1, by (names, dtype, device)."""


class _PlanRegistry:
    """The `_SkillPlan` of every model in use (weakly held), and the generation that
    retires them all when layers or adapters change."""

    def __init__(self) -> None:
        self.generation = 0
        self.plans: weakref.WeakKeyDictionary[nn.Module, _SkillPlan] = weakref.WeakKeyDictionary()

    def adapters_changed(self) -> None:
        self.generation += 1

    def plan(self, model: nn.Module) -> _SkillPlan:
        plan = self.plans.get(model)
        if plan is None or plan.generation != self.generation:
            plan = self.plans[model] = _SkillPlan(self.generation, model)
        return plan


_PLANS = _PlanRegistry()


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Every wrapped layer of `model`, by module path, in module order.

    The answer is kept until the next skill is added or removed on any model; replacing a
    wrapped layer by hand (not through this module) is not noticed.
    """
    return dict(_PLANS.plan(model).layers)


def _layers_or_raise(model: nn.Module) -> list[LoraLinear]:
    layers = list(lora_layers(model).values())
    if not layers:
        raise StoreError("the model has no skills: add one with add_skill first")
    return layers


def skill_names(model: nn.Module) -> list[str]:
    """Names of the skills added to `model`, in the order they were added."""
    layers = list(lora_layers(model).values())
    return list(layers[0].adapters) if layers else []


def skill_spec(model: nn.Module, name: str) -> AdapterSpec:
    """The shape (kind, rank, alpha) of one skill of `model`."""
    layers = _layers_or_raise(model)
    _check_known(layers[0], [name])
    return layers[0].adapters[name]


def _check_known(layer: LoraLinear, names: Sequence[str], allow_base: bool = False) -> None:
    for name in names:
        if name in layer.adapters or (allow_base and name == BASE):
            continue
        known = ", ".join(layer.adapters) or "none"
        raise StoreError(f"unknown skill {name!r} (known: {known})")


def add_skill(
    model: nn.Module,
    name: str,
    rank: int = 8,
    alpha: float | None = None,
    kind: str = "lora",
    generator: torch.Generator | None = None,
) -> None:
    """Add skill `name` to every linear layer of `model`, wrapping each nn.Linear once.

    alpha is peft's `lora_alpha` (B A is scaled by alpha / rank); None gives
    `default_alpha(rank)`, the official multiplier of 16 whatever the rank. The new adapter
    changes no output until it is trained (B or ΔW start at zero) and is inactive outside
    `use_skills`. Give `generator` to make A's initialisation reproducible.
    """
    check_name(name)
    spec = adapter_spec(kind, rank, alpha)
    if name in skill_names(model):
        raise StoreError(f"skill {name!r} already exists on this model")
    _wrap_linears(model)
    layers = _layers_or_raise(model)
    for layer in layers:
        layer.add_adapter(name, spec, generator)
    _PLANS.adapters_changed()


@torch.no_grad()
def add_random_skill(
    model: nn.Module, name: str, like: str, generator: torch.Generator | None = None
) -> None:
    """Add skill `name` shaped like skill `like`, with random directions and its norms.

    In every layer each factor (A and B of a LoRA, ΔW of a full-rank adapter) is drawn
    from N(0, 1) and rescaled to the Frobenius norm of the same factor of `like`, so a
    bank of such skills has the capacity of the real one without its behaviour: the
    random-LoRA control of a composition claim (docs/ARCHITECTURE.md, "Composition claims").
    Random factors are not aligned as trained ones are, so ‖B A‖ comes out smaller than
    `like`'s even though ‖A‖ and ‖B‖ match.
    """
    spec = skill_spec(model, like)
    add_skill(model, name, rank=spec.rank, alpha=spec.alpha, kind=spec.kind)
    for layer in lora_layers(model).values():
        for new, ref in zip(layer.adapter_parameters(name), layer.adapter_parameters(like)):
            draw = torch.randn(new.shape, generator=generator, dtype=torch.float32)
            norm = draw.norm()
            target = ref.detach().float().norm().cpu()
            new.copy_((draw * (target / norm) if norm > 0 else draw * 0).to(new))


def _wrap_linears(model: nn.Module) -> None:
    """Replace every bare nn.Linear in `model` by a LoraLinear.

    The walk does not enter a LoraLinear, whose base layer and adapters are Linears too.
    """
    targets: list[tuple[nn.Module, str, nn.Linear]] = []

    def visit(parent: nn.Module) -> None:
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                targets.append((parent, child_name, child))
            elif not isinstance(child, LoraLinear):
                visit(child)

    if isinstance(model, nn.Linear):
        raise ShapeError("add_skill needs a model that contains linear layers, not a bare nn.Linear")
    visit(model)
    if not targets and not lora_layers(model):
        raise ShapeError(f"{type(model).__name__} has no nn.Linear layer to attach a skill to")
    for parent, child_name, child in targets:
        setattr(parent, child_name, LoraLinear(child))
    _PLANS.adapters_changed()


def remove_skill(model: nn.Module, name: str) -> None:
    """Remove skill `name` (unmerging it first if it is merged)."""
    layers = _layers_or_raise(model)
    _check_known(layers[0], [name])
    for layer in layers:
        layer.remove_adapter(name)
    _PLANS.adapters_changed()


def trainable_only(model: nn.Module, name: str) -> list[nn.Parameter]:
    """Freeze everything in `model` except skill `name`; return that skill's parameters."""
    layers = _layers_or_raise(model)
    _check_known(layers[0], [name])
    model.requires_grad_(False)
    params = [p for layer in layers for p in layer.adapter_parameters(name)]
    for p in params:
        p.requires_grad_(True)
    return params


def _apply_merge(model: nn.Module, name: str, merge_it: bool, safe: bool) -> None:
    layers = _layers_or_raise(model)
    _check_known(layers[0], [name])
    if merge_it and safe:
        # Check every layer before writing any, so a failure leaves the model untouched.
        for path, layer in lora_layers(model).items():
            if not torch.isfinite(layer.merged_weight(name)).all():
                raise DataError(f"skill {name!r} would make non-finite weights in layer {path}")
    for layer in layers:
        if merge_it:
            layer.merge(name)
        else:
            layer.unmerge(name)


def merge(model: nn.Module, name: str) -> None:
    """Write skill `name` into the base weights (outside `use_skills` the model is then it)."""
    _apply_merge(model, name, merge_it=True, safe=False)


def safe_merge(model: nn.Module, name: str) -> None:
    """Like `merge`, but refuses (DataError) before writing if any merged weight is non-finite."""
    _apply_merge(model, name, merge_it=True, safe=True)


def unmerge(model: nn.Module, name: str) -> None:
    """Undo `merge`: the base weights come back bit for bit."""
    _apply_merge(model, name, merge_it=False, safe=False)


def merged_skills(model: nn.Module) -> list[str]:
    layers = list(lora_layers(model).values())
    return list(layers[0].merged_adapters) if layers else []


def _as_weights(names: Sequence[str], weights: object, dtype: torch.dtype, device: torch.device) -> Tensor:
    k = len(names)
    if weights is None:
        return torch.ones(k, dtype=dtype, device=device)
    w = weights if isinstance(weights, Tensor) else torch.as_tensor(weights, dtype=dtype)
    if w.dim() not in (1, 2) or w.shape[-1] != k:
        raise ShapeError(f"skill weights must be [{k}] or [B, {k}] for {k} skills, got {list(w.shape)}")
    return w.to(device=device, dtype=dtype)


@dataclass(frozen=True)
class _ColumnPlan:
    """Which entry of the weight vector, times which scaling, each stacked rank column takes."""

    lora_names: tuple[str, ...]
    lora_index: Tensor
    """Position in the weight vector of each LoRA rank column: [R]."""
    lora_scale: Tensor
    """alpha / r of the skill owning each rank column: [R]."""
    full_names: tuple[str, ...]
    full_index: Tensor
    """Position in the weight vector of each full-rank skill: [k_f]."""


def _column_plan(
    spec_of: dict[str, AdapterSpec], names: tuple[str, ...], keep: tuple[int, ...],
    dtype: torch.dtype, device: torch.device,
) -> _ColumnPlan:
    lora = [i for i in keep if spec_of[names[i]].kind == "lora"]
    full = [i for i in keep if spec_of[names[i]].kind == "full"]
    index = [i for i in lora for _ in range(spec_of[names[i]].rank)]
    scale = [spec_of[names[i]].scaling for i in index]
    with cache_mode():
        return _ColumnPlan(
            lora_names=tuple(names[i] for i in lora),
            lora_index=torch.tensor(index, dtype=torch.long, device=device),
            lora_scale=torch.tensor(scale, dtype=dtype, device=device),
            full_names=tuple(names[i] for i in full),
            full_index=torch.tensor(full, dtype=torch.long, device=device),
        )


def _prepare_active(
    plan: _SkillPlan, names: Sequence[str], weights: object
) -> ActiveSet | None:
    """Turn (names, weights) into what each layer needs; None when only the base remains."""
    names = tuple(names)
    ref = next(iter(plan.layers.values())).base_layer.weight
    dtype, device = ref.dtype, ref.device
    if weights is None:
        # Every skill at weight 1: the same prepared set every time.
        key = (names, dtype, device)
        if key not in plan.all_ones:
            with cache_mode():
                ones = torch.ones(len(names), dtype=dtype, device=device)
                plan.all_ones[key] = _build_active(plan, names, ones)
        return plan.all_ones[key]
    return _build_active(plan, names, _as_weights(names, weights, dtype, device))


def _build_active(plan: _SkillPlan, names: tuple[str, ...], w: Tensor) -> ActiveSet | None:
    k = len(names)
    keep = tuple(i for i, n in enumerate(names) if n != BASE)
    if keep and not (torch.is_grad_enabled() and w.requires_grad):
        # At inference a skill weighted 0 for every sample contributes exactly nothing, so it
        # is skipped; this is also why a one-hot composition reproduces its skill bit for bit.
        nonzero = (w != 0).reshape(-1, k).any(dim=0).tolist()
        keep = tuple(i for i in keep if nonzero[i])
    if not keep:
        return None
    key = (names, keep, w.dtype, w.device)
    columns = plan.columns.get(key)
    if columns is None:
        spec_of = next(iter(plan.layers.values())).adapters
        columns = plan.columns[key] = _column_plan(spec_of, names, keep, w.dtype, w.device)
    lora_cols = None
    if columns.lora_names:
        lora_cols = w.index_select(-1, columns.lora_index) * columns.lora_scale  # [R] or [B, R]
    full_weights = w.index_select(-1, columns.full_index) if columns.full_names else None
    return ActiveSet(columns.lora_names, lora_cols, columns.full_names, full_weights)


def _prepare_blocks(plan: _SkillPlan, names: tuple[str, ...]) -> ActiveSet:
    """The active set of `use_skills(..., blocks=True)`: every skill at weight 1, each on
    its own block of rows; the skills must be adapters of one shape."""
    spec_of = next(iter(plan.layers.values())).adapters
    specs = {spec_of[n] for n in names if n != BASE}
    if BASE in names or len(specs) != 1:
        raise StoreError(f"skills by block must be adapters of one kind and rank, without "
                         f"'{BASE}': got {list(names)}")
    # Every skill at weight 1 (prepared once per model, device and dtype), marked by block.
    return replace(_prepare_active(plan, names, None), blocks=len(names))


@contextmanager
def use_skills(
    model: nn.Module, names: Sequence[str], weights: Tensor | Sequence[float] | None = None,
    blocks: bool = False,
) -> Iterator[None]:
    """Switch on skills `names` in every layer of `model` for the duration of the block.

    weights: None (all 1), [k] (one weight per skill for the whole batch) or [B, k] (per
    sample; B must be the leading dim of every input inside the block). "base" may appear in
    `names` and is the zero adapter. Blocks nest; the previous state is restored on exit.
    blocks=True (no weights): every input is k equal blocks of rows and block j runs with
    skill j alone at weight 1 — the per-sample one-hot weights, computed block by block
    (k fits trained as one: `library.learners.StackedSkillLearner`).
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise StoreError(f"skill names repeat in {names}")
    plan = _PLANS.plan(model)
    layers = list(plan.layers.values())
    if not layers:
        if any(n != BASE for n in names):
            raise StoreError(f"unknown skills {[n for n in names if n != BASE]}: the model has none")
        yield
        return
    first = layers[0]
    _check_known(first, names, allow_base=True)
    merged = [n for n in names if n in first.merged_adapters]
    if merged:
        raise StoreError(f"skills {merged} are merged into the base; unmerge before use_skills")
    if blocks and weights is not None:
        raise StoreError("use_skills takes weights or blocks=True, not both")
    active = _prepare_blocks(plan, tuple(names)) if blocks else _prepare_active(plan, names, weights)
    previous = [layer._activate(active) for layer in layers]
    try:
        yield
    finally:
        for layer, prev in zip(layers, previous):
            layer._switch(prev)
