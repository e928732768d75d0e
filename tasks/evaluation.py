"""Roll a policy out in envs, one episode at a time or side by side, and summarise the
episodes with the suite's scores.

No Ray here: `pipeline/evaluation.py` runs `rollout_batch` inside Ray tasks in parallel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from tasks.suites.base import Suite


@dataclass(frozen=True)
class EpisodeStats:
    """What one evaluation episode produced."""

    episode_return: float
    """Undiscounted sum of rewards."""
    length: int
    """Steps taken before termination or truncation."""
    success: bool
    """Whether the suite reported success at any step (always False where it has none)."""
    cost: float
    """Sum of the per-step safety costs (0 where the suite has none)."""
    score: float
    """The suite's normalised score of the episode (NaN when rolled out without a suite)."""
    seed: int
    """The seed the episode was reset with."""


BatchPolicy = Callable[[np.ndarray, list[int]], np.ndarray]
"""A policy acting for several episodes at once: (observations of the live episodes
[E, S] float32, their indices in the batch) -> actions [E, A]."""


class _Episode:
    """What one episode has added up so far."""

    def __init__(self, seed: int):
        self.seed = seed
        self.total, self.cost, self.success, self.length = 0.0, 0.0, False, 0

    def add(self, reward: float, info: dict, suite: Suite | None) -> None:
        self.length += 1
        self.total += float(reward)
        if suite is not None:
            self.cost += suite.cost(info)
            self.success = self.success or suite.success(info)
        else:
            self.cost += float(info.get("cost", 0.0))
            self.success = self.success or bool(info.get("success", False))

    def stats(self, suite: Suite | None, env_name: str | None) -> EpisodeStats:
        score = (suite.score(env_name, self.total, self.cost, success=self.success)
                 if suite is not None else float("nan"))
        return EpisodeStats(self.total, self.length, self.success, self.cost, score, self.seed)


def rollout_batch(
    envs: Sequence[gym.Env],
    policy: BatchPolicy,
    seeds: Sequence[int],
    horizon: int | None = None,
    *,
    suite: Suite | None = None,
    env_name: str | None = None,
) -> list[EpisodeStats]:
    """Roll one episode in each env side by side: env i is reset with `seeds[i]`, and every
    step makes one `policy` call for all episodes still running.

    An episode ends at termination, truncation, or after `horizon` steps when given. With
    `suite` (and `env_name`) the suite reads success and cost from `info` and scores each
    episode; without, the raw `info["success"]` / `info["cost"]` are read and the score is
    NaN. Returns the episodes in the order of `envs`.
    """
    if len(envs) != len(seeds) or not envs:
        raise ValueError(f"rollout_batch needs one seed per env and at least one env, got "
                         f"{len(envs)} envs and {len(seeds)} seeds")
    if suite is not None and env_name is None:
        raise ValueError("rollout with a suite needs env_name to score episodes")
    episodes = [_Episode(seed) for seed in seeds]
    observations = [env.reset(seed=seed)[0] for env, seed in zip(envs, seeds, strict=True)]
    live = list(range(len(envs)))
    while live:
        batch = np.stack([np.asarray(observations[i], dtype=np.float32) for i in live])
        actions = np.asarray(policy(batch, live), dtype=np.float32)
        still = []
        for row, i in enumerate(live):
            observations[i], reward, terminated, truncated, info = envs[i].step(actions[row])
            episodes[i].add(reward, info, suite)
            if not (terminated or truncated or (horizon is not None and episodes[i].length >= horizon)):
                still.append(i)
        live = still
    return [episode.stats(suite, env_name) for episode in episodes]


def rollout(
    env: gym.Env,
    policy_fn: Callable[[np.ndarray], np.ndarray],
    episodes: int,
    seed: int,
    horizon: int | None = None,
    *,
    suite: Suite | None = None,
    env_name: str | None = None,
) -> list[EpisodeStats]:
    """Run `episodes` episodes one after the other in `env`; episode i is reset with seed
    `seed + i`. `policy_fn` maps obs [S] (float32) to action [A]; the rest is
    `rollout_batch`'s."""
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")

    def one(obs: np.ndarray, live: list[int]) -> np.ndarray:
        return np.asarray(policy_fn(obs[0]), dtype=np.float32)[None]

    return [stats for index in range(episodes)
            for stats in rollout_batch([env], one, [seed + index], horizon, suite=suite,
                                       env_name=env_name)]


def summarise(
    stats: Sequence[EpisodeStats], suite: Suite, env: str, cost_threshold: float
) -> dict[str, float]:
    """Means and standard deviations over episodes, scored by `suite`.

    Keys: episodes, return_mean/std, score_mean/std, success_rate, cost_mean/std,
    normalized_cost_mean/std (cost / cost_threshold, DSRL style), length_mean.
    Scores are recomputed from each episode's return, cost and success, so stats rolled
    out without a suite are summarised the same way.
    """
    if not stats:
        raise ValueError("summarise needs at least one episode")
    returns = np.array([s.episode_return for s in stats], dtype=np.float64)
    costs = np.array([s.cost for s in stats], dtype=np.float64)
    scores = np.array(
        [suite.score(env, s.episode_return, s.cost, success=s.success) for s in stats]
    )
    normalized = np.array([suite.normalized_cost(env, c, cost_threshold) for c in costs])
    return {
        "episodes": float(len(stats)),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "score_mean": float(scores.mean()),
        "score_std": float(scores.std()),
        "success_rate": float(np.mean([s.success for s in stats])),
        "cost_mean": float(costs.mean()),
        "cost_std": float(costs.std()),
        "normalized_cost_mean": float(normalized.mean()),
        "normalized_cost_std": float(normalized.std()),
        "length_mean": float(np.mean([s.length for s in stats])),
    }
