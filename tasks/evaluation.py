"""Roll a policy out in an env and summarise the episodes with the suite's scores.

No Ray here: `pipeline/evaluation.py` runs `rollout` inside Ray tasks in parallel.
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
    """Run `episodes` episodes; episode i is reset with seed `seed + i`.

    `policy_fn` maps obs [S] (float32) to action [A]. An episode ends at termination,
    truncation, or after `horizon` steps when given. With `suite` (and `env_name`) the
    suite reads success and cost from `info` and scores each episode; without, the raw
    `info["success"]` / `info["cost"]` are read and the score is NaN.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if suite is not None and env_name is None:
        raise ValueError("rollout with a suite needs env_name to score episodes")
    results = []
    for index in range(episodes):
        episode_seed = seed + index
        obs, _ = env.reset(seed=episode_seed)
        total, cost, success, length = 0.0, 0.0, False, 0
        while True:
            action = np.asarray(policy_fn(np.asarray(obs, dtype=np.float32)), dtype=np.float32)
            obs, reward, terminated, truncated, info = env.step(action)
            length += 1
            total += float(reward)
            if suite is not None:
                cost += suite.cost(info)
                success = success or suite.success(info)
            else:
                cost += float(info.get("cost", 0.0))
                success = success or bool(info.get("success", False))
            if terminated or truncated or (horizon is not None and length >= horizon):
                break
        score = (
            suite.score(env_name, total, cost, success=success)
            if suite is not None
            else float("nan")
        )
        results.append(EpisodeStats(total, length, success, cost, score, episode_seed))
    return results


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
