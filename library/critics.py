"""Critics that score dataset actions for the weighted diffusion objectives.

Two critics, both fitted from offline transitions only (no policy in the loop):

* `IQLCritics` — Implicit Q-Learning (Kostrikov et al., ICLR 2022). V(s) is an upper
  expectile of Q(s, a) over the dataset's actions, so it approximates the best in-data
  action's value without ever querying an action outside the data; Q is regressed on
  r + γ(1 − terminal)·V(s').
* `FeasibilityCritic` — the Hamilton–Jacobi reachability critic of FISOR (Zheng et al.,
  "Safe Offline RL with Feasibility-Guided Diffusion Model", ICLR 2024). Q_h(s, a) is
  the discounted *worst* constraint violation ahead, V_h(s) its minimum over in-data
  actions, and the feasible region is {s : V_h(s) ≤ 0}.

Both hold twin Q networks with Polyak-averaged targets and a state-value network, all
on states normalised with the base policy's normaliser. `loss(batch)` returns named
terms; the training loop owns the optimiser and calls `update_target()` after each step
(`library.learners.CriticLearner` does both). Each critic's `loss` is a method of the
critic, beside the networks it trains (unlike torchrl's separate loss modules); the
sample weights built on the critics live apart, in `library.weighting`.
"""

from __future__ import annotations

import abc
import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from library.config import StoredConfig
from library.errors import ShapeError, SpecError


def mlp(d_in: int, d_out: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` hidden ReLU layers of width `hidden`, then a linear head."""
    blocks: list[nn.Module] = []
    width = d_in
    for _ in range(layers):
        blocks += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    blocks.append(nn.Linear(width, d_out))
    return nn.Sequential(*blocks)


def expectile_loss(diff: Tensor, tau: float) -> Tensor:
    """Asymmetric squared loss |τ − 1(diff < 0)|·diff², averaged.

    With diff = target − prediction and τ > 0.5 the prediction is pushed towards an
    upper expectile of the target; pass diff = prediction − target for a lower one.
    """
    weight = torch.where(diff > 0, tau, 1.0 - tau)
    return (weight * diff.pow(2)).mean()


@dataclass(frozen=True)
class CriticConfig(StoredConfig):
    """Sizes and coefficients of one critic (IQL or feasibility)."""

    FIELD = "critics"

    obs_dim: int
    """State dimension S."""
    act_dim: int
    """Action dimension A."""
    hidden: int = 256
    """Width of every hidden layer of the Q and V networks."""
    layers: int = 2
    """Number of hidden layers of the Q and V networks."""
    discount: float = 0.99
    """γ of the Bellman (or HJ) backup."""
    expectile: float = 0.7
    """τ of the (upper) expectile regression for V; IQL's default."""
    target_rate: float = 0.005
    """Polyak rate of the target Q networks: θ' ← (1 − rate)·θ' + rate·θ."""
    reward_scale: float = 1.0
    """Rewards are multiplied by this before the backup. IQL and the official code scale
    D4RL rewards by 1000 / (max − min episode return) and DSRL's (after FISOR) by
    horizon / (max − min): `reward_scale` below computes it from the data."""
    stop_at_timeouts: bool = False
    """Whether a timeout stops bootstrapping as a terminal does. False (IQL's rule, and the
    official code's on D4RL): a time limit is not an absorbing state, so the next state's
    value still counts. True: the official DSRL loader's masks, 1 − (terminal ∨ timeout),
    which both FISOR and PSEC's safe-RL code train every critic with."""

    def __post_init__(self) -> None:
        for name in ("obs_dim", "act_dim", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise SpecError(f"critics.{name}", f"must be a positive integer, got {getattr(self, name)}")
        for name in ("discount", "expectile"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise SpecError(f"critics.{name}", f"must lie strictly between 0 and 1, got {getattr(self, name)}")
        if not (math.isfinite(self.reward_scale) and self.reward_scale > 0):
            raise SpecError("critics.reward_scale", f"must be a positive number, got {self.reward_scale}")
        if not 0.0 < self.target_rate <= 1.0:
            raise SpecError("critics.target_rate", f"must lie in (0, 1], got {self.target_rate}")



REWARD_NORMS = ("returns", "none")
"""How a task's rewards are scaled before its critics see them: "returns" multiplies by
`reward_scale` of its data, "none" leaves them raw."""


def reward_scale(episode_returns: Sequence[float], horizon: int) -> float:
    """horizon / (max − min episode return): the scale that gives the dataset's returns a
    range of `horizon` (IQL's 1000 / (max − min) on D4RL, whose horizon is 1000; FISOR's
    on DSRL). 1 when every episode returns the same."""
    spread = max(episode_returns) - min(episode_returns) if len(episode_returns) else 0.0
    return float(horizon) / spread if spread > 0 else 1.0


@dataclass(frozen=True)
class FeasibilityConfig(CriticConfig):
    """A critic config with FISOR's defaults for the Hamilton–Jacobi cost critic."""

    expectile: float = 0.9
    """τ of the *lower* expectile regression for V_h (FISOR's `cost_critic_hyperparam`).
    An expectile is only a soft minimum: with binary costs a state whose in-data actions are
    a share p safe counts as feasible roughly when τ·p ≥ (1 − τ)·(1 − p)·scale, i.e.
    p ≳ 0.74 at τ = 0.9 and scale 25. Raise τ towards 1 for a harder minimum."""
    violation_scale: float = 25.0
    """h = violation_scale·cost where cost > 0, else −1 (FISOR's `cost_scale`). It sets the
    HJ horizon: a violation k steps ahead makes V_h > 0 while γ^k·(scale + 1) > 1, about
    320 steps at γ = 0.99 and scale 25."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.violation_scale <= 0.0:
            raise SpecError("critics.violation_scale", f"must be positive, got {self.violation_scale}")


class _TwinCritic(nn.Module, abc.ABC):
    """Twin Q(s, a) with Polyak targets and V(s), on normalised states.

    Subclasses choose how the twins are reduced (`_pessimistic`: min for rewards, max for
    costs), how V is regressed and what the Q target is.
    """

    def __init__(self, config: CriticConfig, normalizer: nn.Module):
        super().__init__()
        self.config = config
        # The base policy's normaliser (a module of buffers, never trained): critics and
        # policy must see states on the same scale, and it travels with the base.
        self.normalizer = normalizer
        s, a = config.obs_dim, config.act_dim
        self.q_nets = nn.ModuleList(
            [mlp(s + a, 1, config.hidden, config.layers) for _ in range(2)]
        )
        self.target_q_nets = copy.deepcopy(self.q_nets).requires_grad_(False)
        self.value_net = mlp(s, 1, config.hidden, config.layers)

    @staticmethod
    @abc.abstractmethod
    def _pessimistic(qs: Tensor) -> Tensor:
        """Reduce the twins [2, B] -> [B] towards the safe side for this quantity."""

    def _check(self, obs: Tensor, actions: Tensor | None = None) -> None:
        if obs.shape[-1] != self.config.obs_dim:
            raise ShapeError(f"critic expects states of dim {self.config.obs_dim}, got {obs.shape[-1]}")
        if actions is not None and actions.shape[-1] != self.config.act_dim:
            raise ShapeError(f"critic expects actions of dim {self.config.act_dim}, got {actions.shape[-1]}")

    def _qs(self, nets: nn.ModuleList, obs: Tensor, actions: Tensor) -> Tensor:
        """Both twins. obs: [B, S] raw, actions: [B, A] -> [2, B]."""
        x = torch.cat([self.normalizer(obs), actions], dim=-1)
        return torch.stack([net(x).squeeze(-1) for net in nets])

    def q(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Pessimistic target-network value of (s, a): [B]. What weights and IDQL use."""
        self._check(obs, actions)
        return self._pessimistic(self._qs(self.target_q_nets, obs, actions))

    def value(self, obs: Tensor) -> Tensor:
        """V(s): [B]."""
        self._check(obs)
        return self.value_net(self.normalizer(obs)).squeeze(-1)

    def update_target(self) -> None:
        """Polyak step of the target twins towards the online twins."""
        rate = self.config.target_rate
        with torch.no_grad():
            for target, online in zip(self.target_q_nets.parameters(), self.q_nets.parameters()):
                target.lerp_(online, rate)

    @abc.abstractmethod
    def _q_target(self, batch: dict[str, Tensor]) -> Tensor:
        """Regression target of both online twins: [B], computed without grad."""

    def _stops(self, batch: dict[str, Tensor]) -> Tensor:
        """Where the backup does not bootstrap from s': bool [B]."""
        stops = batch["terminals"].bool()
        return stops | batch["timeouts"].bool() if self.config.stop_at_timeouts else stops

    @abc.abstractmethod
    def _value_loss(self, q_target_net: Tensor, v: Tensor) -> Tensor:
        """Expectile loss of V [B] against the pessimistic target-network Q [B]."""

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms over a batch of transitions (raw states).

        "loss" = v_loss + q_loss is what the optimiser minimises: the two terms touch
        disjoint parameters (V's target is the frozen target Q, Q's target uses V(s')
        detached), so one Adam over their sum equals IQL's two separate updates.
        """
        obs, actions = batch["obs"], batch["actions"]
        self._check(obs, actions)
        with torch.no_grad():
            q_target_net = self._pessimistic(self._qs(self.target_q_nets, obs, actions))  # [B]
            td_target = self._q_target(batch)  # [B]
        v = self.value(obs)  # [B]
        v_loss = self._value_loss(q_target_net, v)
        qs = self._qs(self.q_nets, obs, actions)  # [2, B]
        q_loss = (qs - td_target).pow(2).mean(dim=1).sum()
        return {
            "loss": v_loss + q_loss,
            "v_loss": v_loss,
            "q_loss": q_loss,
            "v_mean": v.detach().mean(),
            "q_mean": qs.detach().mean(),
        }


class IQLCritics(_TwinCritic):
    """IQL reward critics: V = τ-expectile of Q over in-data actions, Q ← r + γ(1−d)V(s').

    Twins are reduced with min (clipped double Q). `terminals` stop bootstrapping, and
    `timeouts` too where the config says so (`CriticConfig.stop_at_timeouts`).
    """

    @staticmethod
    def _pessimistic(qs: Tensor) -> Tensor:
        return qs.min(dim=0).values

    def _q_target(self, batch: dict[str, Tensor]) -> Tensor:
        not_done = 1.0 - self._stops(batch).float()
        rewards = batch["rewards"] * self.config.reward_scale
        return rewards + self.config.discount * not_done * self.value(batch["next_obs"])

    def _value_loss(self, q_target_net: Tensor, v: Tensor) -> Tensor:
        return expectile_loss(q_target_net - v, self.config.expectile)

    def advantage(self, obs: Tensor, actions: Tensor) -> Tensor:
        """A(s, a) = Q(s, a) − V(s): [B]."""
        return self.q(obs, actions) - self.value(obs)


class FeasibilityCritic(_TwinCritic):
    """FISOR's Hamilton–Jacobi reachability critic on the dataset's costs.

    Choices, following the paper and its official code (ZhengYinan-AIR/FISOR):

    * The constraint function is per transition: h = violation_scale·cost where
      cost > 0, else −1. Negative means "safe now"; the −1 keeps V_h strictly negative
      in states that never violate, so V_h ≤ 0 is a usable margin. The paper's code
      maps binary costs to {+25, −1}; we keep the cost's magnitude (h grows with cost)
      so graded costs rank actions inside the infeasible region — for binary costs
      both are the same.
    * Backup (discounted HJ, the contraction the paper proves):
      Q_h(s, a) = (1 − γ)·h + γ·max(h, V_h(s')), and Q_h = h where the episode
      terminates (no future to be worse than now), or times out where the config stops
      bootstrapping at timeouts (the official DSRL loader's masks).
    * V_h is the *lower* τ-expectile of Q_h over in-data actions (the paper's reversed
      expectile): it approximates min over supported actions of the worst violation
      ahead, i.e. "is there an in-data way to stay safe from here".
    * Twins are reduced with max: pessimistic for a cost.

    Feasible region: V_h(s) ≤ 0. A safe action in a feasible state: Q_h(s, a) ≤ 0.
    """

    config: FeasibilityConfig

    def __init__(self, config: FeasibilityConfig, normalizer: nn.Module):
        super().__init__(config, normalizer)

    @staticmethod
    def _pessimistic(qs: Tensor) -> Tensor:
        return qs.max(dim=0).values

    def violation(self, costs: Tensor) -> Tensor:
        """h per transition: violation_scale·cost where cost > 0, else −1. [B] -> [B]."""
        return torch.where(costs > 0, self.config.violation_scale * costs, -torch.ones_like(costs))

    def _q_target(self, batch: dict[str, Tensor]) -> Tensor:
        h = self.violation(batch["costs"])
        gamma = self.config.discount
        bootstrapped = (1.0 - gamma) * h + gamma * torch.maximum(h, self.value(batch["next_obs"]))
        return torch.where(self._stops(batch), h, bootstrapped)

    def _value_loss(self, q_target_net: Tensor, v: Tensor) -> Tensor:
        # diff = V − Q: weight τ where Q < V, so V settles on a lower expectile (≈ min).
        return expectile_loss(v - q_target_net, self.config.expectile)

    def feasible(self, obs: Tensor) -> Tensor:
        """Whether each state lies in the feasible region V_h(s) ≤ 0: bool [B]."""
        return self.value(obs) <= 0.0
