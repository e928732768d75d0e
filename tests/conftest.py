import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU local Ray (the size of CI's machine), started once per test module."""
    import ray  # only the modules that use Ray pay for importing it

    ray.init(num_cpus=2, namespace="psec", log_to_driver=False)
    yield
    ray.shutdown()

