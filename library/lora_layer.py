"""The adapter layer: `LoraLinear`, an `nn.Linear` with any number of named adapters (LoRA
`W0 + (alpha/r)·B A` or full-rank `W0 + ΔW`), shaped like HuggingFace peft's
`tuners/lora/layer.py`, and the stacks its batched forward multiplies by.

The model-level operations (adding skills, `use_skills`, merging) are library/lora.py's;
a layer's adapters change only through them, which keeps the model plans there current.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from library.config import is_count
from library.errors import SpecError, StoreError

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
class ActiveSet:
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
    blocks: int = 0
    """k > 0: the batch is k equal blocks of rows, block j with the j-th skill alone at
    weight 1 (`use_skills(..., blocks=True)`; the weights above are then all 1)."""


class _LayerState(NamedTuple):
    """What a `use_skills` block switched on in one layer (a tuple: built for every layer
    on every `use_skills`, so as cheap as one)."""

    skills: ActiveSet
    """The active skills and their weights per rank column (shared by every layer)."""
    lora: _Stack | None
    """This layer's stacks of the active LoRA skills (None: none active)."""
    full: _Stack | None
    """This layer's stack of the active full-rank skills (None: none active)."""


@contextmanager
def cache_mode() -> Iterator[None]:
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
            with cache_mode():
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


def _by_block(x: Tensor, lora: _Stack | None, full: _Stack | None, active: ActiveSet) -> Tensor:
    """The adapters' output when row block j of x [k·b, in] has skill j alone: one batched
    product per factor ([k, b, in] × [k, in, r], then × [k, r, out]), each block with its
    own skill's matrices only, where the per-sample path would multiply every row by every
    skill's columns and zero k − 1 of them."""
    k = active.blocks
    blocks = x.reshape(k, -1, x.shape[-1])  # [k, b, in]
    if lora is not None:
        a_stack, b_stack_t = lora.matrices()  # [k·r, in], [k·r, out]
        h = torch.bmm(blocks, a_stack.view(k, -1, a_stack.shape[-1]).transpose(1, 2))
        h = h * active.lora_cols.view(k, 1, -1)  # each skill's scaling: [k, b, r]
        out = torch.bmm(h, b_stack_t.view(k, -1, b_stack_t.shape[-1]))
    else:
        d_stack, _ = full.matrices()  # [k·out, in]
        out = torch.bmm(blocks, d_stack.view(k, -1, d_stack.shape[-1]).transpose(1, 2))
    return out.reshape(x.shape[0], -1)  # [k·b, out]


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

    def remove_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            self.unmerge(name)
        if self.adapters.pop(name).kind == "lora":
            del self.lora_A[name]
            del self.lora_B[name]
        else:
            del self.full_delta[name]
        self._stacks.clear()

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

    def _activate(self, active: ActiveSet | None) -> _LayerState | None:
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
        if active.blocks:
            return y + _by_block(x, lora, full, active)
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
