"""What every benchmark suite offers the rest of psec.

A suite turns an env name (plus optional dynamics overrides) into a gymnasium env with
one observation/action convention — flat float32 observations, actions in [-1, 1] — and
knows how to normalise an episode's return into the score its benchmark reports.
Everything above this file (datasets, evaluation, the pipeline) sees only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np

from library.errors import SpecError

if TYPE_CHECKING:
    from tasks.spec import Dynamics

# The fields of `tasks.spec.Dynamics`; a suite lists the subset it can apply.
DYNAMICS_FIELDS = ("friction", "gravity", "thigh_size")


class Suite(ABC):
    """One benchmark family (dm_control, Meta-World, MuJoCo locomotion, Bullet-Safety-Gym)."""

    name: ClassVar[str]
    """Registry name, e.g. "metaworld"; what a task spec writes in `suite:`."""

    supported_dynamics: ClassVar[frozenset[str]] = frozenset()
    """Which `Dynamics` fields this suite can apply; any other field must stay 1.0."""

    @abstractmethod
    def envs(self) -> tuple[str, ...]:
        """Every env name this suite accepts, in a stable order (used in error messages)."""

    def check_env(self, env: str) -> str:
        """Return `env` if this suite knows it, else raise SpecError on field `env`."""
        known = self.envs()
        if env not in known:
            raise SpecError("env", f"unknown {self.name} env {env!r}; known: {', '.join(known)}")
        return env

    def check_dynamics(self, dynamics: Dynamics | None) -> None:
        """Raise SpecError if `dynamics` changes something this suite cannot change."""
        if dynamics is None:
            return
        for field in DYNAMICS_FIELDS:
            value = getattr(dynamics, field)
            if value != 1.0 and field not in self.supported_dynamics:
                supported = ", ".join(sorted(self.supported_dynamics)) or "none"
                raise SpecError(
                    f"dynamics.{field}",
                    f"suite {self.name} cannot change {field} (supported: {supported})",
                )

    def make_env(
        self,
        env: str,
        dynamics: Dynamics | None = None,
        seed: int = 0,
        horizon: int | None = None,
    ) -> gym.Env:
        """A fresh env: flat float32 obs, actions in [-1, 1], truncated after `horizon` steps
        (default `default_horizon(env)`). `seed` fixes the env's own randomness (goals,
        initial states); `reset(seed=...)` still seeds each episode."""
        self.check_env(env)
        self.check_dynamics(dynamics)
        if horizon is None:
            horizon = self.default_horizon(env)
        elif horizon < 1:
            raise SpecError("horizon", f"must be >= 1, got {horizon!r}")
        return self._build(env, dynamics, seed, horizon)

    @abstractmethod
    def _build(self, env: str, dynamics: Dynamics | None, seed: int, horizon: int) -> gym.Env:
        """`make_env` once `env` and `dynamics` are checked and `horizon` is resolved."""

    def dims(self, env: str, dynamics: Dynamics | None = None) -> tuple[int, int]:
        """(obs_dim, act_dim) of `make_env(env, dynamics)`, once `env` and `dynamics` are
        checked (`_dims`)."""
        self.check_env(env)
        self.check_dynamics(dynamics)
        return self._dims(env, dynamics)

    def _dims(self, env: str, dynamics: Dynamics | None) -> tuple[int, int]:
        """`dims` of a checked env: builds the env once to read them (a suite that knows
        its layouts says so without building one)."""
        instance = self.make_env(env, dynamics)
        try:
            return (
                int(np.prod(instance.observation_space.shape)),
                int(np.prod(instance.action_space.shape)),
            )
        finally:
            instance.close()

    @abstractmethod
    def score(
        self,
        env: str,
        episode_return: float,
        episode_cost: float | None = None,
        success: bool | None = None,
    ) -> float:
        """The benchmark's normalised score of one episode (D4RL score, success, ...).

        `success` is whether `self.success(info)` held at any step; suites whose score is a
        success rate (Meta-World) need it, the others ignore it."""

    def normalized_cost(self, env: str, episode_cost: float, threshold: float) -> float:
        """Episode cost over the safety budget, as DSRL reports it (<= 1 means safe)."""
        if threshold <= 0:
            raise ValueError(f"cost threshold must be > 0, got {threshold}")
        return episode_cost / threshold

    @abstractmethod
    def default_horizon(self, env: str) -> int:
        """Episode length used when a task spec gives no `horizon`."""

    def success(self, info: dict[str, Any]) -> bool:
        """Whether one step's `info` reports success; suites without a success notion say no."""
        return bool(info.get("success", False))

    def cost(self, info: dict[str, Any]) -> float:
        """One step's safety cost from `info`; 0 for suites without costs."""
        return float(info.get("cost", 0.0))


class StandardEnv(gym.Wrapper):
    """Flat float32 observations and actions in [-1, 1], whatever the wrapped env uses.

    Actions are clipped to [-1, 1] and mapped affinely onto the env's Box bounds, so a
    policy trained on one suite never sees another suite's action scale.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.action_space, gym.spaces.Box):
            raise TypeError(f"StandardEnv needs a Box action space, got {env.action_space}")
        self._inner_obs_space = env.observation_space
        obs_dim = gym.spaces.flatdim(env.observation_space)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        act_shape = env.action_space.shape
        self.action_space = gym.spaces.Box(-1.0, 1.0, act_shape, np.float32)
        low = np.asarray(env.action_space.low, dtype=np.float64)
        high = np.asarray(env.action_space.high, dtype=np.float64)
        # An unbounded action dim cannot be rescaled; pass it through unchanged.
        finite = np.isfinite(low) & np.isfinite(high)
        self._centre = np.where(finite, (high + low) / 2.0, 0.0)
        self._half = np.where(finite, (high - low) / 2.0, 1.0)
        self._inner_dtype = env.action_space.dtype

    def _obs(self, obs: Any) -> np.ndarray:
        return np.asarray(gym.spaces.flatten(self._inner_obs_space, obs), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._obs(obs), info

    def step(self, action):
        # action: [A] in [-1, 1]
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(self._half.shape), -1, 1)
        inner = (self._centre + self._half * action).astype(self._inner_dtype)
        obs, reward, terminated, truncated, info = self.env.step(inner)
        return self._obs(obs), float(reward), bool(terminated), bool(truncated), info


def standardize(env: gym.Env, horizon: int) -> gym.Env:
    """`env` with the psec conventions (StandardEnv) and a time limit of `horizon` steps."""
    if horizon < 1:
        raise SpecError("horizon", f"must be >= 1, got {horizon}")
    return gym.wrappers.TimeLimit(StandardEnv(env), max_episode_steps=horizon)
