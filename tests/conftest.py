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


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first, each module's tests in file order: under
    `pytest -n 2 --dist loadfile` (the README's test command) a worker takes a whole module
    at a time in this order, so the long end-to-end modules start at once and the many
    short ones fill in around them instead of leaving one worker running a long module
    alone at the end."""
    def module(item) -> str:
        return getattr(item, "module", None).__name__ if hasattr(item, "module") else ""

    slow_modules = {module(item) for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: module(item) not in slow_modules)  # stable sort
