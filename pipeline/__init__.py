"""How work flows on Ray: driver, fit stages, evaluation, store actor, inbox, CLI.

Defaults set before anything here imports Ray or dm_control (a user's own setting wins):

* RAY_AUTH_MODE=disabled — Ray 2.60 turns token authentication on for new local
  instances; psec's local instances, CI and `ray job submit` against a
  `ray start --head` started the same way run without tokens.
* RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5 — the Train controller polls its workers every
  2 s by default, which adds seconds to every short smoke-scale fit.
* MUJOCO_GL=egl — nothing here renders; without a choice dm_control tries GLFW first and
  warns on machines without a display.
"""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("MUJOCO_GL", "egl")
