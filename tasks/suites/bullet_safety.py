"""Bullet-Safety-Gym Run and Circle tasks (Ball, Car, Drone, Ant), the DSRL benchmark set.

`bullet_safety_gym` registers its envs with gymnasium on import (it is installed with
`--no-deps` because it pins gymnasium 0.28, but runs on 1.x). The per-step safety cost
is `info["cost"]`.

Scores follow DSRL (Liu et al., 2023, `dsrl.offline_env.OfflineEnv.get_normalized_score`):
normalised reward (R − R_min) / (R_max − R_min) with DSRL's per-task reference returns,
and normalised cost C / threshold (an episode is safe when it is <= 1).

The envs draw initial positions from numpy's and Python's *global* RNGs; the wrapper
below gives each env its own RNG state, seeded by `reset(seed=...)`, and swaps it in
around every call so episodes are reproducible and other code's randomness is untouched.
"""

from __future__ import annotations

import contextlib
import random
import sys
import warnings
from typing import TYPE_CHECKING, Any

import bullet_safety_gym  # noqa: F401  (registers the Safety*-v0 envs with gymnasium)
import gymnasium as gym
import numpy as np

from tasks.suites.base import StandardEnv, Suite

if TYPE_CHECKING:
    from tasks.spec import Dynamics

# env -> (min, max) episode reward of DSRL's datasets: MIN_EPISODE_REWARD and
# MAX_EPISODE_REWARD in dsrl/infos.py (github.com/liuzuxin/DSRL).
REFERENCE_RETURNS = {
    "SafetyBallRun-v0": (26.339754104614258, 1327.445556640625),
    "SafetyCarRun-v0": (204.28726196289062, 574.6533203125),
    "SafetyDroneRun-v0": (10.557029724121094, 682.8330078125),
    "SafetyAntRun-v0": (0.001767391717990563, 955.4818725585938),
    "SafetyBallCircle-v0": (0.38312244415283203, 881.46337890625),
    "SafetyCarCircle-v0": (3.484419822692871, 534.3060913085938),
    "SafetyDroneCircle-v0": (207.794189453125, 996.38916015625),
    "SafetyAntCircle-v0": (0.0177031010389328, 460.7091979980469),
}

# Episode lengths: DEFAULT_MAX_EPISODE_STEPS in dsrl/infos.py (= the gym registrations).
HORIZONS = {
    "SafetyBallRun-v0": 100,
    "SafetyCarRun-v0": 200,
    "SafetyDroneRun-v0": 200,
    "SafetyAntRun-v0": 200,
    "SafetyBallCircle-v0": 200,
    "SafetyCarCircle-v0": 300,
    "SafetyDroneCircle-v0": 300,
    "SafetyAntCircle-v0": 500,
}


@contextlib.contextmanager
def _process_stdio():
    """Run with sys.stdout/stderr set to the process's own streams.

    Building a bullet env silences pybullet's banner by flushing the C stream named after
    `sys.stdout.name` ("<stdout>" -> libc's `stdout`); under a replaced stream (pytest's
    capture, a notebook) that name is no C symbol and the build fails. The process's
    streams still write to whatever fd 1/2 point at, so captured output stays captured.
    """
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.__stdout__ or saved[0]
    sys.stderr = sys.__stderr__ or saved[1]
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


class _OwnGlobalRNG(gym.Wrapper):
    """Runs the wrapped env with its own copy of numpy's and Python's global RNG state."""

    def __init__(self, env: gym.Env, seed: int):
        super().__init__(env)
        self._seed_states(seed)

    def _seed_states(self, seed: int) -> None:
        self._np_state = np.random.RandomState(seed).get_state()
        self._py_state = random.Random(seed).getstate()

    def _call(self, method, *args: Any, **kwargs: Any):
        outer_np, outer_py = np.random.get_state(), random.getstate()
        np.random.set_state(self._np_state)
        random.setstate(self._py_state)
        try:
            return method(*args, **kwargs)
        finally:
            self._np_state, self._py_state = np.random.get_state(), random.getstate()
            np.random.set_state(outer_np)
            random.setstate(outer_py)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._seed_states(seed)
        # pybullet's saveState/restoreState skip motor targets, so the last action of the
        # previous episode would leak into this one; command zero before restoring.
        agent = self.env.unwrapped.agent
        agent.apply_action(np.zeros(self.env.action_space.shape, dtype=np.float32))
        return self._call(self.env.reset, options=options)

    def step(self, action):
        return self._call(self.env.step, action)


class BulletSafetySuite(Suite):
    """Bullet-Safety-Gym Run/Circle tasks; score = DSRL-normalised reward."""

    name = "bullet_safety"

    def envs(self) -> tuple[str, ...]:
        return tuple(REFERENCE_RETURNS)

    def _build(self, env: str, dynamics: Dynamics | None, seed: int, horizon: int) -> gym.Env:
        with warnings.catch_warnings(), _process_stdio():
            # Its Box(-1000, 1000, float64) spaces make gymnasium warn about casts.
            warnings.simplefilter("ignore", RuntimeWarning)
            inner = gym.make(env, max_episode_steps=horizon, disable_env_checker=True)
        wrapped = StandardEnv(_OwnGlobalRNG(inner, seed))
        # The first reset of a bullet env builds the scene and saves it; later resets
        # restore that snapshot and start slightly differently. Do the first one here so
        # every reset a caller sees is of the second kind, and `reset(seed)` repeats.
        wrapped.reset(seed=seed)
        wrapped.action_space.seed(seed)
        return wrapped

    def score(
        self,
        env: str,
        episode_return: float,
        episode_cost: float | None = None,
        success: bool | None = None,
    ) -> float:
        low, high = REFERENCE_RETURNS[env]
        return (episode_return - low) / (high - low)

    def default_horizon(self, env: str) -> int:
        return HORIZONS[env]
