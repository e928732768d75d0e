"""Per-sample weights w(s, a) of the diffusion loss: they select the learning objective.

Minimising E[w(s, a)·‖ε − ε_θ(a_t, s, t)‖²] fits the policy to the dataset's action
distribution reweighted by w, i.e. π(a|s) ∝ μ(a|s)·w(s, a) (weighted regression, as in
IDQL/FISOR). Every weighting is computed from frozen, already-fitted critics, without
gradient:

| name | w(s, a) |
| --- | --- |
| `bc` | 1 |
| `advantage` | clip(exp(β·(Q − V)), 0, max_weight) — IQL critics |
| `feasibility` | feasible s (V_h ≤ 0): 1[Q_h(s, a) ≤ 0]; infeasible s: clip(exp(β_h·(V_h − Q_h)), 0, max_cost_weight) |
| `reward+feasibility` | feasible s: 1[Q_h ≤ 0]·clip(exp(β·(Q − V)), 0, max_weight); infeasible s: as `feasibility` |

The last two are FISOR's (Zheng et al., ICLR 2024): maximise reward only inside the
feasible region, and outside it imitate the actions that most reduce the worst future
violation. Multiplying every weight of one state by a constant leaves π(·|s) unchanged,
so the infeasible branch uses the cost advantage V_h − Q_h (FISOR's form) rather than
−Q_h alone: the two give the same action preference within a state, but the advantage
keeps each infeasible state's total weight near 1 instead of letting states with large
V_h vanish from the loss. FISOR's code clips that branch to [1, cost_ub]; the floor of
1 would keep imitating actions that make things worse, so we clip to [0, max_cost_weight]
as in the paper's formula.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from library.critics import FeasibilityCritic, IQLCritics
from library.errors import SpecError

WEIGHTINGS = ("bc", "advantage", "feasibility", "reward+feasibility")
"""The weighting names a task spec may use."""

Weighting = Callable[[dict[str, Tensor]], Tensor]
"""batch (raw "obs" [B, S], "actions" [B, A], ...) -> weights [B], no grad."""


@dataclass(frozen=True)
class WeightingConfig:
    """Temperatures and clips of the critic-based weightings."""

    beta: float = 3.0
    """Reward temperature β of exp(β·(Q − V)) (IDQL/FISOR use 3)."""
    max_weight: float = 100.0
    """Upper clip of the reward weights; keeps a few large advantages from owning the batch."""
    cost_beta: float = 5.0
    """Cost temperature β_h of exp(β_h·(V_h − Q_h)) in infeasible states (FISOR: 5)."""
    max_cost_weight: float = 150.0
    """Upper clip of the infeasible-state weights (FISOR's `cost_ub`)."""

    def __post_init__(self) -> None:
        for name in ("beta", "max_weight", "cost_beta", "max_cost_weight"):
            if getattr(self, name) <= 0.0:
                raise SpecError(f"weighting.{name}", f"must be positive, got {getattr(self, name)}")


def effective_sample_size(weights: Tensor) -> Tensor:
    """(Σw)² / (B·Σw²): the fraction of a batch [B] that the weights effectively keep
    (1 for equal weights, 1/B when one sample owns them all). A scalar, no grad."""
    total = weights.sum()
    return (total * total / (weights.shape[0] * weights.pow(2).sum())).detach()


def advantage_weights(iql: IQLCritics, obs: Tensor, actions: Tensor, config: WeightingConfig) -> Tensor:
    """clip(exp(β·(Q − V)), 0, max_weight): [B]."""
    return torch.exp(config.beta * iql.advantage(obs, actions)).clamp(0.0, config.max_weight)


def recovery_weights(feas: FeasibilityCritic, obs: Tensor, actions: Tensor, config: WeightingConfig) -> Tensor:
    """Infeasible-state weights clip(exp(β_h·(V_h − Q_h)), 0, max_cost_weight): [B].

    Largest for the in-data actions whose worst future violation is smallest.
    """
    cost_advantage = feas.value(obs) - feas.q(obs, actions)
    return torch.exp(config.cost_beta * cost_advantage).clamp(0.0, config.max_cost_weight)


def make_weighting(
    name: str,
    iql: IQLCritics | None = None,
    feasibility: FeasibilityCritic | None = None,
    config: WeightingConfig | None = None,
) -> Weighting:
    """The weighting `name` over the given fitted critics, as a no-grad callable.

    Raises SpecError when the name is unknown or a critic it needs is missing.
    """
    config = config or WeightingConfig()
    if name not in WEIGHTINGS:
        raise SpecError("weighting", f"unknown weighting {name!r}; choose one of {', '.join(WEIGHTINGS)}")
    if name in ("advantage", "reward+feasibility") and iql is None:
        raise SpecError("weighting", f"{name!r} needs fitted reward (IQL) critics")
    if name in ("feasibility", "reward+feasibility") and feasibility is None:
        raise SpecError("weighting", f"{name!r} needs a fitted feasibility critic (a dataset with costs)")

    @torch.no_grad()
    def weigh(batch: dict[str, Tensor]) -> Tensor:
        obs, actions = batch["obs"], batch["actions"]
        if name == "bc":
            return torch.ones(obs.shape[0], dtype=obs.dtype, device=obs.device)
        if name == "advantage":
            return advantage_weights(iql, obs, actions, config)
        feasible = feasibility.feasible(obs)  # [B] bool
        safe_action = feasibility.q(obs, actions) <= 0.0  # [B] bool
        inside = safe_action.to(obs.dtype)
        if name == "reward+feasibility":
            inside = inside * advantage_weights(iql, obs, actions, config)
        return torch.where(feasible, inside, recovery_weights(feasibility, obs, actions, config))

    weigh.__name__ = weigh.__qualname__ = f"weighting[{name}]"
    return weigh
