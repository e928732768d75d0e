"""Suites build envs with one convention, apply dynamics, and score like their benchmarks."""

import random
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from library.errors import SpecError
from tasks.evaluation import EpisodeStats, rollout, summarise
from tasks.spec import Dynamics
from tasks.suites import SUITES, get_suite
from tasks.suites.base import StandardEnv, standardize


def _steps(env: gym.Env, actions: int, seed: int = 0, action=None) -> tuple[np.ndarray, float]:
    """Final obs and summed cost after `actions` steps of a constant (or random) action."""
    obs, _ = env.reset(seed=seed)
    cost = 0.0
    for _ in range(actions):
        act = env.action_space.sample() if action is None else action
        obs, _, terminated, truncated, info = env.step(act)
        cost += float(info.get("cost", 0.0))
        if terminated or truncated:
            break
    return obs, cost


def test_importing_tasks_imports_no_simulator():
    code = (
        "import sys, tasks, tasks.spec, tasks.suites, tasks.dataset, tasks.evaluation;"
        "heavy = {'mujoco', 'metaworld', 'pybullet', 'dm_control', 'bullet_safety_gym', 'ray'};"
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registry():
    assert set(SUITES) == {"dmc", "metaworld", "mujoco", "bullet_safety"}
    assert get_suite("mujoco") is get_suite("mujoco")
    with pytest.raises(SpecError, match=r"^suite: unknown suite 'atari'; known: dmc, "):
        get_suite("atari")


class _Box2(gym.Env):
    """A one-step env with actions in [0, 4] and a dict observation; records the action."""

    observation_space = gym.spaces.Dict(
        {"a": gym.spaces.Box(-1, 1, (2,)), "b": gym.spaces.Box(-1, 1, (1,))}
    )
    action_space = gym.spaces.Box(0.0, 4.0, (2,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return {"a": np.ones(2), "b": np.zeros(1)}, {}

    def step(self, action):
        self.last = np.asarray(action)
        return {"a": np.ones(2), "b": np.zeros(1)}, 1.0, False, False, {}


def test_standard_env_flattens_and_rescales():
    env = StandardEnv(_Box2())
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (3,)
    assert env.action_space.low.tolist() == [-1, -1] and env.action_space.high.tolist() == [1, 1]
    env.step(np.array([-1.0, 1.0]))
    assert env.unwrapped.last.tolist() == [0.0, 4.0]
    env.step(np.array([0.0, 7.0]))  # out of range is clipped, not extrapolated
    assert env.unwrapped.last.tolist() == [2.0, 4.0]
    limited = standardize(_Box2(), horizon=2)
    limited.reset(seed=0)
    assert not limited.step(np.zeros(2))[3] and limited.step(np.zeros(2))[3]


# ----------------------------------------------------------------------------- metaworld


def test_metaworld_env_and_scripted_expert():
    from tasks.suites.metaworld import scripted_policy

    suite = get_suite("metaworld")
    assert suite.check_env("hammer-v3") == "hammer-v3"
    with pytest.raises(SpecError, match=r"^env: unknown metaworld env 'hammer-v9'"):
        suite.check_env("hammer-v9")
    with pytest.raises(SpecError, match=r"^dynamics\.gravity: suite metaworld cannot change"):
        suite.check_dynamics(Dynamics(gravity=2.0))
    assert suite.default_horizon("reach-v3") == 200
    env = suite.make_env("reach-v3", seed=0, horizon=40)
    assert env.observation_space.shape == (39,) == (suite.dims("reach-v3")[0],)
    assert env.action_space.shape == (4,)
    first, _ = env.reset(seed=5)
    again, _ = env.reset(seed=5)
    assert first.dtype == np.float32 and np.array_equal(first, again)  # goal drawn by seed
    stats = rollout(env, scripted_policy("reach-v3"), 3, seed=0, suite=suite, env_name="reach-v3")
    assert all(s.length == 40 for s in stats)  # truncated at the horizon, no exception
    assert any(s.success for s in stats)
    assert all(s.score == float(s.success) for s in stats)
    assert suite.score("reach-v3", 0.0, success=True) == 1.0
    with pytest.raises(SpecError, match="no scripted Meta-World policy"):
        scripted_policy("nope-v3")


# ----------------------------------------------------------------------------- mujoco


@pytest.mark.parametrize("name", ["HalfCheetah-v5", "Walker2d-v5", "Hopper-v5"])
def test_mujoco_dynamics_change_the_model(name):
    suite = get_suite("mujoco")
    plain = suite.make_env(name)
    model = plain.unwrapped.model
    assert plain.observation_space.shape[0] == suite.dims(name)[0]
    assert plain.action_space.shape[0] == suite.dims(name)[1]

    slippery = suite.make_env(name, Dynamics(friction=0.5)).unwrapped.model
    np.testing.assert_allclose(slippery.geom_friction[:, 0], 0.5 * model.geom_friction[:, 0])
    np.testing.assert_array_equal(slippery.geom_friction[:, 1:], model.geom_friction[:, 1:])

    light = suite.make_env(name, Dynamics(gravity=0.5)).unwrapped.model
    np.testing.assert_allclose(light.opt.gravity, 0.5 * model.opt.gravity)

    big_env = suite.make_env(name, Dynamics(thigh_size=1.5))
    big = big_env.unwrapped.model
    from tasks.suites.mujoco import _MODELS

    for thigh in _MODELS[name][1]:
        body = model.body(thigh).id
        geom = int(np.flatnonzero(model.geom_bodyid == body)[0])
        np.testing.assert_allclose(big.geom_size[geom][:2], 1.5 * model.geom_size[geom][:2])
        assert big.body_mass[body] > 1.5 * model.body_mass[body]  # volume grows ~ s^3
    assert big.body_mass.sum() > model.body_mass.sum()

    # Every shifted env still steps and produces different states from the original.
    actions = np.full(plain.action_space.shape, 0.5, dtype=np.float32)
    base_obs, _ = _steps(plain, 20, action=actions)
    for dynamics in (Dynamics(friction=0.5), Dynamics(gravity=0.5)):
        obs, _ = _steps(suite.make_env(name, dynamics), 20, action=actions)
        assert obs.dtype == np.float32 and not np.allclose(obs, base_obs)
    obs, _ = _steps(big_env, 20, action=actions)
    assert np.isfinite(obs).all()


def test_walker_thigh_stays_attached_to_the_knee():
    import mujoco

    from tasks.suites.mujoco import thigh_xml

    for scale in (0.5, 1.5):
        model = mujoco.MjModel.from_xml_string(thigh_xml("Walker2d-v5", scale))
        thigh = model.geom("thigh_geom")
        thigh_end_z = thigh.pos[2] - thigh.size[1]  # capsule along z, hanging down
        knee_z = model.body("leg").pos[2] + model.joint("leg_joint").pos[2]
        assert knee_z == pytest.approx(thigh_end_z)
        assert thigh.size[1] == pytest.approx(0.225 * scale)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_a_walker_on_resized_thighs_starts_standing_on_them(scale):
    """The torso is lifted by the legs' growth (the thigh capsule reaches 0.45 below the
    hip), so the walker neither starts with its feet in the floor nor, with the paper's
    doubled thighs, leaves Walker2d-v5's healthy height: it ended after 15 steps of zero
    action before the lift."""
    import mujoco

    from tasks.suites.mujoco import thigh_xml

    model = mujoco.MjModel.from_xml_string(thigh_xml("Walker2d-v5", scale))
    assert model.body("torso").pos[2] == pytest.approx(1.25 + 0.45 * (scale - 1.0))
    env = get_suite("mujoco").make_env("Walker2d-v5", Dynamics(thigh_size=scale))
    env.reset(seed=0)
    ended = [env.step(np.zeros(6, dtype=np.float32))[2] for _ in range(40)]
    assert not any(ended)


def test_mujoco_d4rl_scores():
    suite = get_suite("mujoco")
    assert suite.score("HalfCheetah-v5", -280.178953) == pytest.approx(0.0)
    assert suite.score("HalfCheetah-v5", 12135.0) == pytest.approx(100.0)
    assert suite.score("Walker2d-v5", 4592.3) == pytest.approx(100.0)
    assert suite.score("Hopper-v5", (3234.3 - 20.272305) / 2) == pytest.approx(50.0, abs=1e-6)
    with pytest.raises(SpecError, match="unknown mujoco env 'Ant-v5'"):
        suite.make_env("Ant-v5")


def test_mujoco_horizon_truncates():
    env = get_suite("mujoco").make_env("HalfCheetah-v5", horizon=5)
    env.reset(seed=0)
    flags = [env.step(np.zeros(6))[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]


# ----------------------------------------------------------------------------- bullet safety


def test_bullet_safety_costs_scores_and_seeding():
    suite = get_suite("bullet_safety")
    assert "SafetyCarRun-v0" in suite.envs() and suite.default_horizon("SafetyBallRun-v0") == 100
    env = suite.make_env("SafetyBallRun-v0", seed=0)
    assert env.observation_space.shape == (7,) and env.action_space.shape == (2,)
    state = np.random.get_state()[1].copy(), random.getstate()
    full_speed = np.ones(2, dtype=np.float32)
    obs, cost = _steps(env, 40, seed=3, action=full_speed)
    assert cost > 0  # running fast violates the velocity constraint
    again, cost_again = _steps(env, 40, seed=3, action=full_speed)
    assert np.array_equal(obs, again) and cost == cost_again
    # The env's randomness lives in its own state: callers' global RNGs are untouched.
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]
    env.close()
    low, high = 26.339754104614258, 1327.445556640625  # DSRL BallRun reference returns
    assert suite.score("SafetyBallRun-v0", low) == pytest.approx(0.0)
    assert suite.score("SafetyBallRun-v0", high) == pytest.approx(1.0)
    assert suite.normalized_cost("SafetyBallRun-v0", 5.0, 10.0) == 0.5


def test_car_reset_does_not_inherit_the_last_action():
    env = get_suite("bullet_safety").make_env("SafetyCarRun-v0", seed=0)
    finals = []
    for previous in (0.0, 1.0):
        _steps(env, 10, seed=1, action=np.full(2, previous, dtype=np.float32))
        obs, _ = _steps(env, 10, seed=4, action=np.full(2, 0.5, dtype=np.float32))
        finals.append(obs)
    env.close()
    np.testing.assert_array_equal(finals[0], finals[1])


# ----------------------------------------------------------------------------- evaluation


class _Scripted(gym.Env):
    """Five steps; success only at step 2, cost 1 per step, reward 1 per step."""

    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"success": self.t == 2, "cost": 1.0}
        return np.zeros(2, np.float32), 1.0, self.t >= 5, False, info


def test_rollout_counts_success_at_any_step_and_sums_costs():
    suite = get_suite("mujoco")
    stats = rollout(_Scripted(), lambda obs: np.zeros(1), episodes=3, seed=10)
    assert [s.seed for s in stats] == [10, 11, 12]
    assert all(s.success and s.cost == 5.0 and s.length == 5 for s in stats)
    assert all(np.isnan(s.score) for s in stats)  # no suite given
    short = rollout(_Scripted(), lambda obs: np.zeros(1), episodes=1, seed=0, horizon=1)
    assert short[0].length == 1 and not short[0].success
    summary = summarise(stats + short, suite, "Hopper-v5", cost_threshold=10.0)
    assert summary["episodes"] == 4 and summary["success_rate"] == 0.75
    assert summary["cost_mean"] == pytest.approx(4.0)
    assert summary["normalized_cost_mean"] == pytest.approx(0.4)
    assert summary["score_mean"] == pytest.approx(suite.score("Hopper-v5", 4.0), rel=1e-6)
    with pytest.raises(ValueError):
        summarise([], suite, "Hopper-v5", 10.0)


def test_episode_stats_fields():
    stats = EpisodeStats(1.0, 2, True, 0.0, 1.0, 0)
    assert stats.episode_return == 1.0 and stats.length == 2


@pytest.mark.parametrize(("suite", "env"), [
    ("dmc", "walker-stand"), ("metaworld", "hammer-v3"),
    ("mujoco", "HalfCheetah-v5"), ("bullet_safety", "SafetyBallRun-v0"),
])
def test_every_suite_refuses_a_horizon_below_one_before_building(suite, env):
    with pytest.raises(SpecError, match=r"^horizon: must be >= 1, got 0$"):
        get_suite(suite).make_env(env, horizon=0)
