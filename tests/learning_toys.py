"""Tiny offline datasets with known answers, shared by the learning tests (not collected).

All states and actions are 1-D, so what a critic or policy learned can be read off a
handful of numbers.
"""

import numpy as np

from library.critics import FeasibilityConfig, FeasibilityCritic
from library.data import OfflineData
from library.diffusion import StateNormalizer
from library.learners import CriticLearner
from library.training import train


def toy_data(obs, actions, next_obs=None, rewards=None, costs=None, terminals=None) -> OfflineData:
    """OfflineData from arrays; by default a bandit (s' = s, every step terminal, r = 0)."""
    n = len(obs)
    return OfflineData.from_arrays(
        obs=np.asarray(obs, np.float32),
        actions=np.asarray(actions, np.float32),
        next_obs=np.asarray(obs if next_obs is None else next_obs, np.float32),
        rewards=np.zeros(n, np.float32) if rewards is None else np.asarray(rewards, np.float32),
        costs=None if costs is None else np.asarray(costs, np.float32),
        terminals=np.ones(n, bool) if terminals is None else terminals,
        timeouts=np.zeros(n, bool),
        episode=np.arange(n),
    )


def bimodal_bandit(n: int = 4096, seed: int = 0) -> OfflineData:
    """Half the actions near +0.6 (reward 1), half near −0.6 (reward 0), in every state."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 1))
    good = rng.random(n) < 0.5
    actions = np.where(good, 0.6, -0.6)[:, None] + rng.normal(0, 0.05, (n, 1))
    return toy_data(obs, actions, rewards=good.astype(np.float32))


def wall_walk(n: int = 4096, seed: int = 0) -> OfflineData:
    """1-D walk s' = s + a/2 in [-1, 2.5], random actions; the cost is how far s' passes 1.

    From s ≤ 1.5 stepping left keeps every future safe (feasible); from s > 1.5 every
    in-data action crosses the wall (infeasible), the least for a = −1. From a feasible s,
    an action is unsafe exactly when s + a/2 > 1.
    """
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 2.5, (n, 1))
    actions = rng.uniform(-1, 1, (n, 1))
    next_obs = np.clip(obs + 0.5 * actions, -1, 2.5)
    return toy_data(
        obs, actions, next_obs, costs=np.clip(next_obs[:, 0] - 1, 0, None), terminals=np.zeros(n, bool)
    )


def mixture_halves(n: int = 4096, seed: int = 0) -> tuple[OfflineData, OfflineData, OfflineData]:
    """(left, right, both): action +0.8 where s < 0, −0.8 where s ≥ 0; each half alone, and all."""
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, (n, 1))
    actions = np.where(obs < 0, 0.8, -0.8) + rng.normal(0, 0.05, (n, 1))
    left = obs[:, 0] < 0
    return (
        toy_data(obs[left], actions[left]),
        toy_data(obs[~left], actions[~left]),
        toy_data(obs, actions),
    )


def fit_feasibility(data: OfflineData, steps: int = 2000) -> FeasibilityCritic:
    """A small HJ critic fitted on `data` (γ = 0.9, so the toy's horizon is short)."""
    cfg = FeasibilityConfig(obs_dim=1, act_dim=1, hidden=64, discount=0.9, target_rate=0.02)
    critic = FeasibilityCritic(cfg, StateNormalizer.from_data(data.obs))
    train(CriticLearner(feasibility=critic), data, steps=steps, batch_size=256, lr=1e-3, seed=0)
    return critic
