"""Evaluation envs reused within a process give the episodes new envs give."""

import numpy as np
import pytest

from tasks import env_pool
from tasks.evaluation import rollout_batch
from tasks.suites import get_suite


@pytest.fixture(autouse=True)
def _empty_pool():
    env_pool.clear()
    yield
    env_pool.clear()


def _policy(obs_dim: int, act_dim: int):
    """A fixed nonlinear map of the observation: deterministic, and it moves the arm."""
    weights = np.random.default_rng(0).normal(size=(obs_dim, act_dim)) / np.sqrt(obs_dim)
    return lambda obs, live: np.tanh(3.0 * obs @ weights)


@pytest.mark.parametrize("suite_name, env, horizon", [("metaworld", "push-wall-v3", 60),
                                                      ("dmc", "walker-run", 60)])
def test_pooled_envs_roll_out_the_episodes_of_new_ones(suite_name, env, horizon):
    suite = get_suite(suite_name)
    policy = _policy(*suite.dims(env))
    seeds = [3, 4, 5]

    def roll(envs):
        return [(e.episode_return, e.length, e.success)
                for e in rollout_batch(envs, policy, seeds, horizon, suite=suite, env_name=env)]

    new = roll([suite.make_env(env, seed=1) for _ in seeds])
    # The pool's envs first roll out other episodes (other seeds), then these.
    with env_pool.pooled_envs(suite, env, None, 1, None, 3) as envs:
        rollout_batch(envs, policy, [7, 8, 9], horizon, suite=suite, env_name=env)
    with env_pool.pooled_envs(suite, env, None, 1, None, 3) as envs:
        reused = roll(envs)
    assert reused == new


def test_the_pool_builds_an_env_once_keeps_at_most_its_cap_and_drops_a_failed_one(monkeypatch):
    suite = get_suite("dmc")
    built, closed = [], []
    real_make = suite.make_env

    def make_env(*args, **kwargs):
        env = real_make(*args, **kwargs)
        built.append(env)
        real_close = env.close
        env.close = lambda: (closed.append(env), real_close())
        return env

    monkeypatch.setattr(suite, "make_env", make_env)
    with env_pool.pooled_envs(suite, "walker-walk", None, 0, None, 2) as first:
        pass
    with env_pool.pooled_envs(suite, "walker-walk", None, 0, None, 3) as second:
        assert second[:2] == first  # the two kept, one more built
    assert len(built) == 3 and env_pool.pooled() == 3
    with env_pool.pooled_envs(suite, "walker-walk", None, 1, None, 1):
        pass  # another seed is another env
    assert len(built) == 4 and env_pool.pooled() == 4

    monkeypatch.setattr(env_pool, "MAX_POOLED", 2)
    with env_pool.pooled_envs(suite, "walker-walk", None, 2, None, 1):
        pass
    assert env_pool.pooled() == 2 and closed == built[:3]  # the least recently used first

    with pytest.raises(RuntimeError), \
            env_pool.pooled_envs(suite, "walker-walk", None, 2, None, 1) as failed:
        raise RuntimeError("a rollout failed")
    assert failed[0] in closed and env_pool.pooled() == 1
