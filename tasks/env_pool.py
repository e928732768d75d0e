"""Envs kept for reuse within one process, for evaluation rollouts.

Building an env is the costly part of a short rollout: a Meta-World env compiles its
MuJoCo model (0.33 s each here, 10 per evaluation chunk, against 0.11 s for one 200-step
episode), a DMC one 0.08 s. Every episode starts with `reset(seed=...)`, which sets all
that the episode depends on (goal, initial state, the env's RNG), so an env that ran
other episodes gives the same episode as a new one: the one-at-a-time evaluation path has
always rolled every episode of a chunk out in one env, and tests/test_batched_evaluation.py
checks both paths give the same episodes. A Ray worker process that rolls out chunk after
chunk of the same task (a stream's evaluations, a skill's learning curve) builds its envs
once.

Envs are pooled by everything `Suite.make_env` takes (suite, env, dynamics, seed,
horizon); at most `MAX_POOLED` are kept per process, the least recently used closed first.
An env whose rollout raised is closed, not kept: it may be in any state.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import gymnasium as gym

    from tasks.spec import Dynamics
    from tasks.suites.base import Suite

MAX_POOLED = 32
"""Envs a process keeps between rollouts (one evaluation chunk uses up to its episode
count, 10 at the paper's scales)."""

_Key = tuple[str, str, str | None, int, int | None]
_pool: OrderedDict[_Key, list[gym.Env]] = OrderedDict()
_lock = threading.Lock()


def _key(suite: Suite, env: str, dynamics: Dynamics | None, seed: int,
         horizon: int | None) -> _Key:
    return (suite.name, env, None if dynamics is None else dynamics.model_dump_json(), seed,
            horizon)


@contextmanager
def pooled_envs(suite: Suite, env: str, dynamics: Dynamics | None, seed: int,
                horizon: int | None, count: int) -> Iterator[list[gym.Env]]:
    """`count` envs as `suite.make_env(env, dynamics, seed=seed, horizon=horizon)` makes
    them, taken from the pool where it has them; back into the pool afterwards."""
    key = _key(suite, env, dynamics, seed, horizon)
    with _lock:
        free = _pool.pop(key, [])
    envs, rest = free[:count], free[count:]
    envs += [suite.make_env(env, dynamics, seed=seed, horizon=horizon)
             for _ in range(count - len(envs))]
    try:
        yield envs
    except BaseException:
        _close(envs)
        _put_back(key, rest)
        raise
    _put_back(key, envs + rest)


def _put_back(key: _Key, envs: list[gym.Env]) -> None:
    evicted: list[gym.Env] = []
    with _lock:
        if envs:
            _pool[key] = _pool.pop(key, []) + envs
        while sum(len(kept) for kept in _pool.values()) > MAX_POOLED:
            oldest = next(iter(_pool))
            kept = _pool[oldest]
            evicted.append(kept.pop(0))
            if not kept:
                del _pool[oldest]
    _close(evicted)


def _close(envs: list[gym.Env]) -> None:
    for env in envs:
        env.close()


def pooled() -> int:
    """Envs the pool holds now (for tests)."""
    with _lock:
        return sum(len(kept) for kept in _pool.values())


def clear() -> None:
    """Close every pooled env."""
    with _lock:
        envs = [env for kept in _pool.values() for env in kept]
        _pool.clear()
    _close(envs)
