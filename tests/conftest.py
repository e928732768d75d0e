import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture(scope="session")
def _ray_instance():
    """The test process's Ray: 2 CPUs (the size of CI's machine), started by the first module
    that asks for it and kept until the session ends, so modules do not each pay its
    start-up and its workers' imports (10-30 s a module on 2 busy cores). Its workers
    carry the dummy AWS credentials of the moto S3 tests (tests/store_builders.py): the
    S3 stores of those tests are opened inside Ray tasks, which read credentials from
    their own environment."""
    import ray  # only the modules that use Ray pay for importing it
    from store_builders import AWS_ENV

    from pipeline.runtime import keep_idle_workers

    keep_idle_workers(2)  # as `psec run` does for its local instance
    ray.init(num_cpus=2, namespace="psec", log_to_driver=False,
             runtime_env={"env_vars": dict(AWS_ENV)})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_cluster(_ray_instance):
    """Ray for a module, as if started for it alone: the named actors its tests left (each
    store's detached store actor and inbox) are killed when the module ends."""
    yield
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        try:
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        except ValueError:  # gone meanwhile
            pass


@pytest.fixture
def no_ray(request, monkeypatch):
    """Reaching `ray.init` fails the test: what it checks must happen before any Ray instance
    (in particular an unrelated one on this machine) is touched. Ray counts as not started
    even where the process's shared instance (`ray_cluster`) runs, so code that would attach
    to it reaches `ray.init` too; a test that uses `ray_cluster` keeps it."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was reached")

    monkeypatch.setattr(ray, "init", refuse)
    if "ray_cluster" not in request.fixturenames:
        monkeypatch.setattr(ray, "is_initialized", lambda: False)


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
