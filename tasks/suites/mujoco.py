"""Gymnasium MuJoCo locomotion (HalfCheetah-v5, Walker2d-v5, Hopper-v5) with dynamics shifts.

Dynamics overrides, applied once when the env is built (MuJoCo envs never reload their
model on reset, so they hold for every episode):

* `friction`: multiplies the sliding friction (`model.geom_friction[:, 0]`) of every geom;
  torsional and rolling friction are left alone (they barely act in these planar robots).
* `gravity`: multiplies `model.opt.gravity`.
* `thigh_size`: multiplies the radius and half-length of the thigh capsules — Walker2d
  `thigh_geom` and `thigh_left_geom`, Hopper `thigh_geom`, HalfCheetah `bthigh` and `fthigh`
  — and their offset from the hip, then moves the body hanging below each thigh (the
  knee) by the displacement of the capsule's far end so the leg stays attached, and lifts
  the torso by the legs' growth so the robot starts standing on them, not with its feet
  in the floor. The root's height joint (`rootz`) is measured from the torso's place in
  the model, so Walker2d's and Hopper's healthy-height range moves with the standing
  height: a Walker2d with doubled thighs left the range within ~15 steps without the
  lift (docs/DEVIATIONS.md). The edit is made with `mujoco.MjSpec` and the model
  recompiled, so the thighs' masses and inertias follow from their new volumes (the models
  use `inertiafromgeom`).

Scores are D4RL-normalised: 100 · (R − R_random) / (R_expert − R_random) with D4RL's
reference returns (d4rl/infos.py, REF_MIN_SCORE / REF_MAX_SCORE of the -v2 tasks, whose
observation and action spaces the -v5 envs keep).
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

import gymnasium as gym
import mujoco
import numpy as np

from tasks.suites.base import StandardEnv, Suite

if TYPE_CHECKING:
    from tasks.spec import Dynamics

DEFAULT_HORIZON = 1000

# env -> (D4RL random return, D4RL expert return)
REFERENCE_RETURNS = {
    "HalfCheetah-v5": (-280.178953, 12135.0),
    "Walker2d-v5": (1.629008, 4592.3),
    "Hopper-v5": (-20.272305, 3234.3),
}

# env -> (model file inside gymnasium's assets, thigh body names)
_MODELS = {
    "HalfCheetah-v5": ("half_cheetah.xml", ("bthigh", "fthigh")),
    "Walker2d-v5": ("walker2d_v5.xml", ("thigh", "thigh_left")),
    "Hopper-v5": ("hopper.xml", ("thigh",)),
}


def _quat_z(quat: np.ndarray) -> np.ndarray:
    """The local z axis (a capsule's axis) of a frame rotated by unit quaternion (w, x, y, z)."""
    w, x, y, z = quat
    return np.array([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)])


def thigh_xml(env: str, scale: float) -> str:
    """The MJCF of `env` with its thigh capsules scaled by `scale` (see the module doc)."""
    filename, thighs = _MODELS[env]
    path = os.path.join(os.path.dirname(gym.__file__), "envs", "mujoco", "assets", filename)
    spec = mujoco.MjSpec.from_file(path)
    # Compiled once to read each capsule's frame in its body's coordinates.
    model = spec.compile()
    reaches = []  # how much further down each leg now reaches (negative: shorter)
    for body_name in thighs:
        body = spec.body(body_name)
        displacement = np.zeros(3)
        for geom in body.geoms:
            compiled = model.geom(geom.name)
            pos, half_length = compiled.pos.copy(), compiled.size[1]
            axis = _quat_z(compiled.quat)
            far_end = max(pos + half_length * axis, pos - half_length * axis, key=np.linalg.norm)
            displacement = (scale - 1.0) * far_end
            geom.size = [compiled.size[0] * scale, half_length * scale, 0.0]
            geom.pos = pos * scale
        for child in body.bodies:
            child.pos = np.asarray(child.pos) + displacement
        reaches.append(-float(displacement[2]))
    torso = spec.body("torso")
    torso.pos = np.asarray(torso.pos) + np.array([0.0, 0.0, max(reaches, key=abs)])
    # to_xml() writes the spec as of its last compile, so compile the edits first.
    spec.compile()
    return spec.to_xml()


class MujocoSuite(Suite):
    """HalfCheetah / Walker2d / Hopper (-v5) with friction, gravity and thigh-size shifts."""

    name = "mujoco"
    supported_dynamics = frozenset({"friction", "gravity", "thigh_size"})

    def envs(self) -> tuple[str, ...]:
        return tuple(REFERENCE_RETURNS)

    def _build(self, env: str, dynamics: Dynamics | None, seed: int, horizon: int) -> gym.Env:
        kwargs = {"max_episode_steps": horizon, "disable_env_checker": True}
        if dynamics is not None and dynamics.thigh_size != 1.0:
            # MujocoEnv only loads models from files: write the edited model, build, delete.
            with tempfile.NamedTemporaryFile("w", suffix=".xml", delete=False) as handle:
                handle.write(thigh_xml(env, dynamics.thigh_size))
            try:
                inner = gym.make(env, xml_file=handle.name, **kwargs)
            finally:
                os.unlink(handle.name)
        else:
            inner = gym.make(env, **kwargs)
        model = inner.unwrapped.model
        if dynamics is not None:
            model.geom_friction[:, 0] *= dynamics.friction
            model.opt.gravity[:] = model.opt.gravity * dynamics.gravity
        inner.reset(seed=seed)
        inner.action_space.seed(seed)
        return StandardEnv(inner)

    def _dims(self, env: str, dynamics: Dynamics | None) -> tuple[int, int]:
        # Dynamics never change the state or action layout; only the env name matters.
        return {"HalfCheetah-v5": (17, 6), "Walker2d-v5": (17, 6), "Hopper-v5": (11, 3)}[env]

    def score(
        self,
        env: str,
        episode_return: float,
        episode_cost: float | None = None,
        success: bool | None = None,
    ) -> float:
        random_return, expert_return = REFERENCE_RETURNS[env]
        return 100.0 * (episode_return - random_return) / (expert_return - random_return)

    def default_horizon(self, env: str) -> int:
        return DEFAULT_HORIZON
