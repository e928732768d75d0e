"""Meta-World (v3) manipulation tasks, one env per task name (`hammer-v3`, `push-wall-v3`, ...).

Goals are controlled through `metaworld.MT1(name, seed=...)` and `env.set_task(task)`:
MT1 fixes 50 goal/object configurations per task from `seed`, and every `reset` draws
one of them with the wrapper's RNG (seeded by `reset(seed=...)`), so an episode is a
pure function of its reset seed. The gym `Meta-World/MT1` entry point is avoided on
purpose: it draws a goal from its own unseeded stream and forces 500-step episodes.

Episodes last 200 steps by default, as in Continual World. Observations are 39-d,
actions 4-d (xyz of the end effector, gripper). Success is `info["success"]` at ANY step
of an episode; the score of an episode is 1.0 if it succeeded, else 0.0, so the mean
score is the success rate.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import metaworld
import numpy as np
from metaworld.policies import ENV_POLICY_MAP

from library.errors import SpecError
from tasks.suites.base import Suite, standardize

if TYPE_CHECKING:
    from tasks.spec import Dynamics

DEFAULT_HORIZON = 200  # Continual World's episode length.

# The Continual World CW10 sequence, in order (Wołczyk et al., 2021), as v3 names.
CW10 = (
    "hammer-v3",
    "push-wall-v3",
    "faucet-close-v3",
    "push-back-v3",
    "stick-pull-v3",
    "handle-press-side-v3",
    "push-v3",
    "shelf-place-v3",
    "window-close-v3",
    "peg-unplug-side-v3",
)


@cache
def _benchmark(env: str, seed: int) -> metaworld.MT1:
    # MT1 builds the env and resets it 50 times to draw goals: worth caching per process.
    return metaworld.MT1(env, seed=seed)


class _GoalPerReset(gym.Wrapper):
    """Sets one of MT1's goals before every reset, drawn from an RNG seeded at reset."""

    def __init__(self, env: gym.Env, tasks: list[Any], seed: int):
        super().__init__(env)
        self._tasks = tasks
        self._rng = np.random.default_rng(seed)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        index = int(self._rng.integers(len(self._tasks)))
        self.env.unwrapped.set_task(self._tasks[index])
        obs, info = self.env.reset(seed=seed, options=options)
        return obs, {**info, "goal_index": index}


class MetaWorldSuite(Suite):
    """Meta-World v3 single-task envs with seeded goals; score = success."""

    name = "metaworld"

    def envs(self) -> tuple[str, ...]:
        return tuple(metaworld.ALL_V3_ENVIRONMENTS)

    def _build(self, env: str, dynamics: Dynamics | None, seed: int, horizon: int) -> gym.Env:
        benchmark = _benchmark(env, seed)
        inner = benchmark.train_classes[env]()
        # The env raises once its own step counter passes max_path_length; align it with
        # the time limit so the TimeLimit wrapper, not an exception, ends the episode.
        inner.max_path_length = horizon
        inner.seed(seed)
        return standardize(_GoalPerReset(inner, benchmark.train_tasks, seed), horizon)

    def _dims(self, env: str, dynamics: Dynamics | None) -> tuple[int, int]:
        return 39, 4  # every v3 task: hand, gripper, 2 objects (+ previous frame), goal

    def score(
        self,
        env: str,
        episode_return: float,
        episode_cost: float | None = None,
        success: bool | None = None,
    ) -> float:
        if success is None:
            raise ValueError("metaworld scores need the episode's success flag")
        return float(bool(success))

    def default_horizon(self, env: str) -> int:
        return DEFAULT_HORIZON


def scripted_policy(env: str) -> Callable[[np.ndarray], np.ndarray]:
    """Meta-World's hand-written expert for `env`: obs [39] -> action [4] in [-1, 1]."""
    if env not in ENV_POLICY_MAP:
        raise SpecError("env", f"no scripted Meta-World policy for {env!r}")
    policy = ENV_POLICY_MAP[env]()

    def act(obs: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            # The policies warn whenever a gain saturates; the clip below is the intent.
            warnings.simplefilter("ignore", UserWarning)
            action = policy.get_action(np.asarray(obs, dtype=np.float64))
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    return act
