"""The dm_control suite: names, dims, episodes, seeding, dynamics and scores."""

import numpy as np
import pytest

from library.errors import SpecError
from tasks.evaluation import rollout
from tasks.spec import Dynamics
from tasks.suites import get_suite


@pytest.fixture(scope="module")
def suite():
    return get_suite("dmc")


def test_walker_dims_and_flat_float32_observations(suite):
    assert suite.dims("walker-stand") == (24, 6)
    assert suite.dims("cheetah-run") == (17, 6)
    env = suite.make_env("walker-walk", seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (24,)
    assert env.action_space.low.min() == -1 and env.action_space.high.max() == 1


def test_episode_is_truncated_at_the_horizon(suite):
    assert suite.default_horizon("walker-run") == 1000
    env = suite.make_env("walker-stand", seed=0, horizon=7)
    env.reset(seed=0)
    flags = [env.step(np.zeros(6))[2:4] for _ in range(7)]
    assert flags[:-1] == [(False, False)] * 6 and flags[-1] == (False, True)


def test_reset_seed_fixes_the_episode(suite):
    env = suite.make_env("walker-stand", seed=0, horizon=5)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 6))

    def episode(seed):
        first, _ = env.reset(seed=seed)
        return [first] + [env.step(a)[0] for a in actions]

    a, b, c = episode(3), episode(3), episode(4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], c[0])


def test_dynamics_change_the_model_and_unsupported_ones_are_refused(suite):
    env = suite.make_env("walker-walk", Dynamics(friction=0.5, gravity=2.0))
    base = suite.make_env("walker-walk")
    assert np.allclose(env.physics.model.opt.gravity, 2.0 * base.physics.model.opt.gravity)
    assert np.allclose(env.physics.model.geom_friction[:, 0], 0.5 * base.physics.model.geom_friction[:, 0])
    with pytest.raises(SpecError, match="^dynamics.thigh_size: suite dmc cannot change"):
        suite.make_env("walker-walk", Dynamics(thigh_size=1.2))


def test_unknown_env_is_a_spec_error(suite):
    with pytest.raises(SpecError, match="^env: unknown dmc env 'walker-fly'"):
        suite.make_env("walker-fly")
    with pytest.raises(SpecError, match="^env:"):
        suite.check_env("walker")


def test_score_is_the_return_and_rollout_uses_it(suite):
    assert suite.score("walker-stand", 812.5) == 812.5
    env = suite.make_env("walker-stand", seed=0, horizon=20)
    stats = rollout(env, lambda obs: np.zeros(6, np.float32), 2, seed=0, suite=suite,
                    env_name="walker-stand")
    assert [s.length for s in stats] == [20, 20]
    assert all(s.score == s.episode_return and 0 <= s.episode_return <= 20 for s in stats)
