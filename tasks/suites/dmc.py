"""DeepMind Control Suite tasks as gymnasium environments.

An environment name is `<domain>-<task>` ("walker-stand", "cheetah-run",
"ball_in_cup-catch"); any pair in `dm_control.suite.ALL_TASKS` is accepted. Observations
are the task's observation dict flattened in its own (ordered) key order, float32;
actions are rescaled to [-1, 1]; an episode lasts `horizon` control steps (1000 by
default, the suite's own limit); the score is the undiscounted return, which DMC already
keeps in [0, 1000]. Dynamics: `friction` and `gravity` multipliers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import gymnasium as gym
import numpy as np
from dm_control import suite as dm_suite

from library.errors import SpecError
from tasks.suites.base import Suite

if TYPE_CHECKING:
    from tasks.spec import Dynamics

DEFAULT_HORIZON = 1000


def env_names() -> tuple[str, ...]:
    """Every `domain-task` name of dm_control's suite, in the suite's own order."""
    return tuple(f"{domain}-{task}" for domain, task in dm_suite.ALL_TASKS)


def split_name(env: str) -> tuple[str, str]:
    """Return (domain, task) for `env`, or raise SpecError naming the field `env`."""
    domain, sep, task = env.partition("-")
    if not sep or (domain, task) not in dm_suite.ALL_TASKS:
        raise SpecError("env", f"unknown dmc env {env!r}; known: {', '.join(env_names())}")
    return domain, task


def _seed32(seed: int) -> int:
    # RandomState takes 32-bit seeds; SeedSequence spreads any integer over that range.
    return int(np.random.SeedSequence(int(seed)).generate_state(1)[0])


class DMCEnv(gym.Env):
    """One dm_control suite task behind the gymnasium API.

    `reset(seed=s)` reseeds the task's RandomState, so the initial state of an episode
    depends only on `s`; `reset()` continues that stream.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: str, seed: int = 0, horizon: int | None = None,
                 friction: float = 1.0, gravity: float = 1.0):
        domain, task = split_name(env)
        self.name = env
        self.horizon = DEFAULT_HORIZON if horizon is None else int(horizon)
        if self.horizon < 1:
            raise SpecError("horizon", f"must be >= 1, got {horizon!r}")
        # We hold the RandomState so reset(seed) can reseed it in place; the time limit is
        # ours (`horizon`), so the suite's own limit is switched off.
        self._random = np.random.RandomState(_seed32(seed))
        self._env = dm_suite.load(domain, task, task_kwargs={"random": self._random,
                                                             "time_limit": float("inf")})
        # Multipliers applied once to the model: DMC tasks never re-randomise these
        # fields on reset, so one edit holds for every episode.
        model = self._env.physics.model
        model.geom_friction[:, 0] *= friction   # sliding friction of every geom
        model.opt.gravity[:] *= gravity
        spec = self._env.action_spec()
        self._act_low = spec.minimum.astype(np.float64)
        self._act_high = spec.maximum.astype(np.float64)
        obs_dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, spec.shape, np.float32)
        self._t = 0

    @property
    def physics(self):
        """The underlying MuJoCo physics (read it, e.g. for rendering or diagnostics)."""
        return self._env.physics

    @staticmethod
    def _flatten(observation: Mapping[str, np.ndarray]) -> np.ndarray:
        # obs: [S] — the dict's values in key order, each flattened.
        return np.concatenate([np.asarray(v, np.float32).ravel() for v in observation.values()])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._random.seed(_seed32(seed))
        self._t = 0
        return self._flatten(self._env.reset().observation), {}

    def step(self, action):
        # action: [A] in [-1, 1], mapped affinely onto the task's action bounds.
        a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        time_step = self._env.step(self._act_low + (a + 1.0) * 0.5 * (self._act_high - self._act_low))
        self._t += 1
        # A DMC episode ends early only when the task sets discount 0 (a true terminal).
        terminated = bool(time_step.last() and time_step.discount == 0.0)
        truncated = not terminated and self._t >= self.horizon
        reward = float(time_step.reward or 0.0)
        return self._flatten(time_step.observation), reward, terminated, truncated, {}


class DMCSuite(Suite):
    """The `dmc` suite: dm_control tasks, scored by their raw return (already 0..1000)."""

    name = "dmc"
    supported_dynamics = frozenset({"friction", "gravity"})

    def envs(self) -> tuple[str, ...]:
        return env_names()

    def _build(self, env: str, dynamics: Dynamics | None, seed: int, horizon: int) -> DMCEnv:
        if dynamics is None:
            return DMCEnv(env, seed, horizon)
        return DMCEnv(env, seed, horizon, friction=dynamics.friction, gravity=dynamics.gravity)

    def score(self, env: str, episode_return: float, episode_cost: float | None = None,
              success: bool | None = None) -> float:
        """DMC returns are already normalised to [0, 1000]; the score is the return."""
        self.check_env(env)
        return float(episode_return)

    def default_horizon(self, env: str) -> int:
        return DEFAULT_HORIZON
