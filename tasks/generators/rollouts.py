"""Record full transitions of a policy in an env: the raw material of every generator.

A policy here is any `obs [S] -> action [A]` callable. Every source of randomness is
seeded from one integer: episode i is reset with `episode_seed(seed, i)`, and random or
noisy policies draw from a numpy Generator built from the same seed, so a dataset is a
pure function of (env, policy, episodes, seed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from tasks.suites.base import Suite

Policy = Callable[[np.ndarray], np.ndarray]


def derive_seed(*keys: int) -> int:
    """A 32-bit seed from a tuple of non-negative integers (e.g. dataset seed, env index)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def random_policy(act_dim: int, rng: np.random.Generator) -> Policy:
    """Uniform actions in [-1, 1]^A."""
    return lambda obs: rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)


def noisy(policy: Policy, std: float, rng: np.random.Generator) -> Policy:
    """`policy` plus Gaussian noise of std `std`, clipped to [-1, 1]; `policy` itself if std is 0."""
    if std == 0:
        return policy

    def act(obs: np.ndarray) -> np.ndarray:
        action = np.asarray(policy(obs), np.float32)
        return np.clip(action + std * rng.standard_normal(action.shape), -1.0, 1.0).astype(np.float32)

    return act


@dataclass
class Recording:
    """Transitions of whole episodes (rows contiguous per episode) and per-episode totals."""

    obs: list[np.ndarray] = field(default_factory=list)
    """Per step: obs [S] before the action."""
    actions: list[np.ndarray] = field(default_factory=list)
    """Per step: action [A] in [-1, 1]."""
    rewards: list[float] = field(default_factory=list)
    """Per step: reward."""
    costs: list[float] = field(default_factory=list)
    """Per step: safety cost (0 where the suite has none)."""
    next_obs: list[np.ndarray] = field(default_factory=list)
    """Per step: obs [S] after the action."""
    terminals: list[bool] = field(default_factory=list)
    """Per step: the MDP ended here."""
    timeouts: list[bool] = field(default_factory=list)
    """Per step: the episode was cut by the horizon here."""
    episode: list[int] = field(default_factory=list)
    """Per step: episode id."""
    returns: list[float] = field(default_factory=list)
    """Per episode: undiscounted return."""
    episode_costs: list[float] = field(default_factory=list)
    """Per episode: total cost."""
    successes: list[bool] = field(default_factory=list)
    """Per episode: whether the suite reported success at any step."""

    def arrays(self, with_costs: bool) -> dict[str, np.ndarray]:
        """The transitions as the arrays `tasks.dataset.to_table` takes."""
        out = {
            "obs": np.stack(self.obs).astype(np.float32),
            "actions": np.stack(self.actions).astype(np.float32),
            "rewards": np.asarray(self.rewards, np.float32),
            "next_obs": np.stack(self.next_obs).astype(np.float32),
            "terminals": np.asarray(self.terminals, bool),
            "timeouts": np.asarray(self.timeouts, bool),
            "episode": np.asarray(self.episode, np.int64),
        }
        if with_costs:
            out["costs"] = np.asarray(self.costs, np.float32)
        return out

def record(env: gym.Env, suite: Suite, policy: Policy, episodes: int, seed: int,
           into: Recording | None = None) -> Recording:
    """Run `episodes` episodes of `policy`; episode i is reset with derive_seed(seed, i).

    Episode ids continue from `into` when given, so several policies can share one
    recording (medium-expert, a behaviour-policy mixture).
    """
    rec = into if into is not None else Recording()
    first_id = len(rec.returns)
    for i in range(episodes):
        obs, _ = env.reset(seed=derive_seed(seed, i))
        total, cost, success = 0.0, 0.0, False
        while True:
            action = np.asarray(policy(obs), np.float32)
            next_obs, reward, terminated, truncated, info = env.step(action)
            step_cost = suite.cost(info)
            rec.obs.append(obs)
            rec.actions.append(action)
            rec.rewards.append(float(reward))
            rec.costs.append(step_cost)
            rec.next_obs.append(next_obs)
            rec.terminals.append(bool(terminated))
            rec.timeouts.append(bool(truncated and not terminated))
            rec.episode.append(first_id + i)
            total += float(reward)
            cost += step_cost
            success = success or suite.success(info)
            obs = next_obs
            if terminated or truncated:
                break
        rec.returns.append(total)
        rec.episode_costs.append(cost)
        rec.successes.append(success)
    return rec
