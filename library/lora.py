"""Skills as adapters on a frozen base: LoRA (`W0 + (alpha/r)·B A`) and full-rank (`W0 + ΔW`).

The LoRA multiplier follows the official PSEC code, which adds `alpha_r · x A B` with
alpha_r = 16 used directly (not divided by the rank) and A drawn lecun-normal. In peft's
convention (`lora_alpha` / `r`) that is `lora_alpha = 16 · r`, the default here, so a stored
skill reads as an ordinary peft LoRA with scaling 16. peft's own default (alpha/r = 2 with
kaiming-uniform A) makes the effective step about 14× smaller, and a rank-8 skill then
learns far slower than full fine-tuning (docs/DEVIATIONS.md, "LoRA strength").

The layer is shaped like HuggingFace peft's `tuners/lora/layer.py`: `LoraLinear` wraps a
`base_layer: nn.Linear`, and every adapter lives in `nn.ModuleDict`s keyed by the skill name
(`lora_A[name]`, `lora_B[name]`, or `full_delta[name]` for the full-rank PSEC(MLP) baseline),
so a state dict reads `net.blocks.0.fc1.lora_A.walk.weight` as in peft.

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

import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from library.config import is_count
from library.errors import DataError, ShapeError, SpecError, StoreError
from library.names import BASE, check_name

KINDS = ("lora", "full")

DEFAULT_SCALING = 16.0
"""The multiplier of B A when no alpha is given: the official code's alpha_r."""


def default_alpha(rank: int) -> float:
    """peft's `lora_alpha` that gives the official multiplier at `rank`: 16 · rank."""
    return DEFAULT_SCALING * rank


def lecun_normal_(weight: Tensor, generator: torch.Generator | None = None) -> None:
    """JAX's `lecun_normal` for a torch [out, in] weight: a normal truncated at ±2σ, rescaled
    so that the variance is 1 / fan_in (fan_in = in)."""
    fan_in = weight.shape[1]
    # 0.8796… is the std of a unit normal truncated to [-2, 2] (jax.nn.initializers).
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2.0 * std, b=2.0 * std, generator=generator)


@dataclass(frozen=True)
class AdapterSpec:
    """How one skill's adapter is shaped; identical in every wrapped layer of a model."""

    kind: str
    """"lora" (low-rank B A) or "full" (a dense ΔW, the PSEC(MLP) baseline)."""
    rank: int
    """LoRA rank r; 0 for "full" adapters."""
    alpha: float
    """peft's `lora_alpha`; the update is scaled by alpha / rank (16 · rank by default, the
    official multiplier of 16). 1 for "full" adapters."""

    @property
    def scaling(self) -> float:
        """The factor applied to B A (peft's `scaling[name]`)."""
        return self.alpha / self.rank if self.kind == "lora" else 1.0


@dataclass(frozen=True)
class _ActiveSet:
    """The skills a `use_skills` block switched on, prepared once for every layer.

    Zero-weight skills (at inference) and the "base" zero adapter are already removed, and
    the per-skill weights are expanded to one weight per LoRA rank column with the scaling
    folded in, so a layer only multiplies.
    """

    lora_names: tuple[str, ...]
    """LoRA skills in stacking order."""
    lora_cols: Tensor | None
    """Weight per stacked rank column, w_i · s_i repeated r_i times: [R] or per sample [B, R]."""
    full_names: tuple[str, ...]
    """Full-rank skills in stacking order."""
    full_weights: Tensor | None
    """Weight per full-rank skill: [k_f] or per sample [B, k_f]."""


class _LayerState(NamedTuple):
    """What a `use_skills` block switched on in one layer (a tuple: built for every layer
    on every `use_skills`, so as cheap as one)."""

    skills: _ActiveSet
    """The active skills and their weights per rank column (shared by every layer)."""
    lora: _Stack | None
    """This layer's stacks of the active LoRA skills (None: none active)."""
    full: _Stack | None
    """This layer's stack of the active full-rank skills (None: none active)."""


@contextmanager
def _cache_mode() -> Iterator[None]:
    """For tensors kept across calls: no graph, and never inference tensors.

    A cache filled inside `torch.inference_mode()` would otherwise poison later training,
    which may not save inference tensors for backward.
    """
    with torch.inference_mode(False), torch.no_grad():
        yield


class _Stack:
    """The active adapters of one layer as the two matrices the batched forward needs.

    LoRA: the A stack [R, in] and the B stackᵀ [R, out]; full-rank: the ΔW stack
    [k·out, in] (and no second). Without gradients one skill needs no stacking (its
    parameters are used as they are) and the concatenation of several is cached, rebuilt
    when any parameter's `_version` counter or storage moves (an optimiser step or
    `load_state_dict` writes in place). With gradients the matrices are built every call,
    the B stackᵀ as a row-major copy (see `matrices`).
    """

    __slots__ = ("params", "kind", "k", "cached_versions", "cached_in", "cached_out")

    def __init__(self, params: tuple[Tensor, ...], kind: str, k: int):
        self.params = params  # LoRA: A_1..A_k, B_1..B_k; full: ΔW_1..ΔW_k
        self.kind = kind
        self.k = k
        self.cached_versions: tuple[tuple[int, int], ...] | None = None
        """(`_version`, storage) of every parameter when the cached stacks were built."""
        self.cached_in: Tensor | None = None
        """The cached A stack (LoRA) or ΔW stack (full-rank)."""
        self.cached_out: Tensor | None = None
        """The cached B stackᵀ (LoRA; None for full-rank)."""

    def _build(self) -> tuple[Tensor, Tensor | None]:
        p, k = self.params, self.k
        if self.kind == "lora":
            return torch.cat(p[:k], dim=0), torch.cat(p[k:], dim=1).t()
        return torch.cat(p, dim=0), None

    def matrices(self) -> tuple[Tensor, Tensor | None]:
        """(A stack, B stackᵀ) of the active LoRA skills, or (ΔW stack, None) of the
        full-rank ones."""
        p, k = self.params, self.k
        if torch.is_grad_enabled() and any(t.requires_grad for t in p):
            # Part of the graph: built afresh every call.
            if self.kind == "full":
                return (p[0] if k == 1 else torch.cat(p, dim=0)), None
            # B stackᵀ row-major: for a column-major mat2 (the plain `B.t()` view) autograd
            # computes B's gradient as (dYᵀ h)ᵀ, a [out, batch] × [batch, R] product that
            # runs several times slower here than the hᵀ dY it takes for a row-major one
            # (docs/BENCHMARKS.md, "LoRA step").
            return (p[0] if k == 1 else torch.cat(p[:k], dim=0),
                    torch.cat([b.t() for b in p[k:]], dim=0))
        if k == 1:
            return (p[0], p[1].t()) if self.kind == "lora" else (p[0], None)
        # data_ptr too: .to()/.double() swap a parameter's storage without a version bump
        versions = tuple((t._version, t.data_ptr()) for t in p)
        if versions != self.cached_versions:
            with _cache_mode():
                self.cached_in, self.cached_out = self._build()
            self.cached_versions = versions
        return self.cached_in, self.cached_out


_ROW_ALIGNMENT = 16
"""Floats in 64 bytes: rows of a contiguous [B, in] batch all start on a 64-byte boundary
when `in` is a multiple of this."""


def _down_project(x: Tensor, a_stack: Tensor) -> Tensor:
    """x Aᵀ: [B, in] -> [B, R].

    With few output columns (R <= 8 measured) the CPU GEMM computes a row differently,
    in the last bits, depending on where the row starts in memory, so the same state would
    get another projection at another place in its batch. Padding `in` with zeros to a
    multiple of `_ROW_ALIGNMENT` puts every row on the same boundary: a state's result no
    longer depends on its neighbours, which lets evaluation roll episodes out side by side
    and still give each the actions it gets alone (tests/test_batched_evaluation.py). The
    pad costs a copy of x in the layers whose `in` needs it (the network's input layer).
    """
    pad = -x.shape[-1] % _ROW_ALIGNMENT
    if pad == 0:
        return F.linear(x, a_stack)
    return F.linear(F.pad(x, (0, pad)), F.pad(a_stack, (0, pad)))


class LoraLinear(nn.Module):
    """An `nn.Linear` with any number of named adapters; the wrapped layer is frozen.

    Merging writes an adapter into `base_layer.weight` for adapter-free inference. The first
    merge keeps a copy of the untouched weight and `unmerge` restores from that copy (then
    re-applies the adapters still merged, in their merge order), so merge followed by
    unmerge gives back the base weight bit for bit — subtracting B A again would not,
    because float addition does not round-trip.
    """

    def __init__(self, base_layer: nn.Linear):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoraLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.full_delta = nn.ModuleDict()
        self.adapters: dict[str, AdapterSpec] = {}
        self.merged_adapters: list[str] = []
        # The weight before the first merge; a buffer so that .to() moves it along.
        self.register_buffer("_unmerged_weight", None, persistent=False)
        # What use_skills switched on (None: the base alone, plus merged skills).
        self._on: _LayerState | None = None
        # This layer's stacks by (kind, skill names), kept until an adapter is added or
        # removed: looking the parameters up on every use_skills costs more than the
        # forward pass of a small batch.
        self._stacks: dict[tuple[str, tuple[str, ...]], _Stack] = {}

    # ------------------------------------------------------------------ adapters
    def add_adapter(
        self, name: str, spec: AdapterSpec, generator: torch.Generator | None = None
    ) -> None:
        """Add a zero-effect adapter: B (or ΔW) starts at zero, A lecun-normal as in the
        official code (peft draws A kaiming-uniform, with a third of the variance)."""
        weight = self.base_layer.weight
        factory = {"dtype": weight.dtype, "device": weight.device}
        if spec.kind == "lora":
            a = nn.Linear(self.in_features, spec.rank, bias=False, **factory)
            b = nn.Linear(spec.rank, self.out_features, bias=False, **factory)
            with torch.no_grad():
                lecun_normal_(a.weight, generator)
                nn.init.zeros_(b.weight)
            self.lora_A[name] = a
            self.lora_B[name] = b
        else:
            delta = nn.Linear(self.in_features, self.out_features, bias=False, **factory)
            with torch.no_grad():
                nn.init.zeros_(delta.weight)
            self.full_delta[name] = delta
        self.adapters[name] = spec
        self._stacks.clear()
        _PLANS.adapters_changed()

    def remove_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            self.unmerge(name)
        if self.adapters.pop(name).kind == "lora":
            del self.lora_A[name]
            del self.lora_B[name]
        else:
            del self.full_delta[name]
        self._stacks.clear()
        _PLANS.adapters_changed()

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        if self.adapters[name].kind == "lora":
            return [self.lora_A[name].weight, self.lora_B[name].weight]
        return [self.full_delta[name].weight]

    def delta_weight(self, name: str) -> Tensor:
        """The dense update this adapter adds to the base weight: [out, in]."""
        spec = self.adapters[name]
        if spec.kind == "lora":
            return (self.lora_B[name].weight @ self.lora_A[name].weight) * spec.scaling
        return self.full_delta[name].weight

    # ------------------------------------------------------------------ merging
    @torch.no_grad()
    def merged_weight(self, name: str) -> Tensor:
        """What `base_layer.weight` becomes once `name` is merged (nothing is written)."""
        return self.base_layer.weight + self.delta_weight(name).to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self, name: str) -> None:
        if name in self.merged_adapters:
            raise StoreError(f"skill {name!r} is already merged")
        new_weight = self.merged_weight(name)
        if self._unmerged_weight is None:
            self._unmerged_weight = self.base_layer.weight.detach().clone()
        self.base_layer.weight.copy_(new_weight)
        self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, name: str) -> None:
        if name not in self.merged_adapters:
            raise StoreError(f"skill {name!r} is not merged")
        self.merged_adapters.remove(name)
        assert self._unmerged_weight is not None
        self.base_layer.weight.copy_(self._unmerged_weight)
        for other in self.merged_adapters:
            self.base_layer.weight.copy_(self.merged_weight(other))
        if not self.merged_adapters:
            self._unmerged_weight = None

    # ------------------------------------------------------------------ forward
    def _stack(self, kind: str, names: tuple[str, ...]) -> _Stack | None:
        if not names:
            return None
        cached = self._stacks.get((kind, names))
        if cached is None:
            if kind == "lora":
                params = tuple(self.lora_A[n].weight for n in names) + tuple(
                    self.lora_B[n].weight for n in names
                )
            else:
                params = tuple(self.full_delta[n].weight for n in names)
            cached = self._stacks[(kind, names)] = _Stack(params, kind, len(names))
        return cached

    def _activate(self, active: _ActiveSet | None) -> _LayerState | None:
        """Switch on `active` (None: the base alone); returns the previous state."""
        previous = self._on
        self._switch(None if active is None else _LayerState(
            active, self._stack("lora", active.lora_names), self._stack("full", active.full_names)))
        return previous

    def _switch(self, state: _LayerState | None) -> None:
        # Straight into the instance dict: nn.Module.__setattr__ first checks whether the
        # value is a parameter, buffer or module, which was a third of a use_skills block.
        self.__dict__["_on"] = state

    def forward(self, x: Tensor) -> Tensor:
        # x: [B, in] (per-sample weights index the leading dim) or [..., in] for [k] weights
        base = self.base_layer
        y = F.linear(x, base.weight, base.bias)
        state = self._on
        if state is None:
            return y
        active, lora, full = state.skills, state.lora, state.full
        if lora is not None:
            a_stack, b_stack_t = lora.matrices()
            h = _down_project(x, a_stack) * active.lora_cols  # [B, R]
            y = torch.addmm(y, h, b_stack_t) if h.dim() == 2 else y + h @ b_stack_t
        if full is not None:
            d_stack, _ = full.matrices()
            w = active.full_weights
            if w.dim() == 1:
                # One combined ΔW for the whole batch: [out, in]
                delta = (w.view(-1, 1, 1) * d_stack.view(len(w), self.out_features, -1)).sum(0)
                y = y + F.linear(x, delta)
            else:
                # Per sample: all k ΔW x at once, then weight them. h: [B, k, out]
                h = F.linear(x, d_stack).view(x.shape[0], w.shape[1], self.out_features)
                y = y + torch.bmm(w.unsqueeze(1), h).squeeze(1)
        return y

    def extra_repr(self) -> str:
        skills = ", ".join(f"{n}:{s.kind}" + (f"(r={s.rank})" if s.kind == "lora" else "")
                           for n, s in self.adapters.items())
        return f"in={self.in_features}, out={self.out_features}, skills=[{skills}]"


# ---------------------------------------------------------------------- model level
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
        self.all_ones: dict[tuple, _ActiveSet | None] = {}
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


def adapter_spec(kind: str = "lora", rank: int = 8, alpha: float | None = None) -> AdapterSpec:
    """The adapter a skill of `kind`, `rank` and peft `alpha` gets (None: `default_alpha`),
    or a SpecError naming the bad field: the one rule for these three (task specs check
    theirs with it too). A full-rank adapter ignores rank and alpha."""
    if kind not in KINDS:
        raise SpecError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "full":
        return AdapterSpec(kind="full", rank=0, alpha=1.0)
    if not is_count(rank):
        raise SpecError("rank", f"must be a positive integer, got {rank!r}")
    if alpha is None:
        alpha = default_alpha(rank)
    if not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and math.isfinite(alpha)
            and alpha > 0):
        raise SpecError("alpha", f"must be a positive finite number, got {alpha!r}")
    return AdapterSpec(kind="lora", rank=rank, alpha=float(alpha))


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
    with _cache_mode():
        return _ColumnPlan(
            lora_names=tuple(names[i] for i in lora),
            lora_index=torch.tensor(index, dtype=torch.long, device=device),
            lora_scale=torch.tensor(scale, dtype=dtype, device=device),
            full_names=tuple(names[i] for i in full),
            full_index=torch.tensor(full, dtype=torch.long, device=device),
        )


def _prepare_active(
    plan: _SkillPlan, names: Sequence[str], weights: object
) -> _ActiveSet | None:
    """Turn (names, weights) into what each layer needs; None when only the base remains."""
    names = tuple(names)
    ref = next(iter(plan.layers.values())).base_layer.weight
    dtype, device = ref.dtype, ref.device
    if weights is None:
        # Every skill at weight 1: the same prepared set every time.
        key = (names, dtype, device)
        if key not in plan.all_ones:
            with _cache_mode():
                ones = torch.ones(len(names), dtype=dtype, device=device)
                plan.all_ones[key] = _build_active(plan, names, ones)
        return plan.all_ones[key]
    return _build_active(plan, names, _as_weights(names, weights, dtype, device))


def _build_active(plan: _SkillPlan, names: tuple[str, ...], w: Tensor) -> _ActiveSet | None:
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
    return _ActiveSet(columns.lora_names, lora_cols, columns.full_names, full_weights)


@contextmanager
def use_skills(
    model: nn.Module, names: Sequence[str], weights: Tensor | Sequence[float] | None = None
) -> Iterator[None]:
    """Switch on skills `names` in every layer of `model` for the duration of the block.

    weights: None (all 1), [k] (one weight per skill for the whole batch) or [B, k] (per
    sample; B must be the leading dim of every input inside the block). "base" may appear in
    `names` and is the zero adapter. Blocks nest; the previous state is restored on exit.
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
    active = _prepare_active(plan, names, weights)
    previous = [layer._activate(active) for layer in layers]
    try:
        yield
    finally:
        for layer, prev in zip(layers, previous):
            layer._switch(prev)
