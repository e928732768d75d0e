"""What a task is: specs (`tasks.spec`), environments and scores (`tasks.suites`),
datasets (`tasks.dataset`, `tasks.importers`, `tasks.generators`) and rollouts
(`tasks.evaluation`). No Ray here, and importing this package imports no simulator:
a suite's module (mujoco, metaworld, pybullet, dm_control) loads on first `get_suite`.
"""

import os

# Nothing in tasks renders; without a choice dm_control tries GLFW first and warns on
# machines without a display (a user's own setting wins). pipeline/__init__ does the same.
os.environ.setdefault("MUJOCO_GL", "egl")
