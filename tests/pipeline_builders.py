"""Tiny streams for the pipeline tests (not collected).

Datasets are synthetic and go straight into the store (`data.source: store`), so a test
pays for Ray Train and the DMC rollouts, not for data generation. Dims are those of the
dm_control walker (obs 24, act 6) because evaluation rolls out in walker envs.
"""

import os

import numpy as np
import yaml

from library.store import SkillStore
from tasks.dataset import to_table

WALKER_DIMS = (24, 6)


def synthetic_table(obs_dim=WALKER_DIMS[0], act_dim=WALKER_DIMS[1], n=200, seed=0):
    """Random transitions in episodes of 50 steps, in the canonical layout."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    arrays = dict(obs=obs, actions=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                  rewards=rng.normal(size=n).astype(np.float32),
                  next_obs=np.roll(obs, -1, axis=0),
                  terminals=np.zeros(n, bool), timeouts=np.arange(n) % 50 == 49)
    return to_table(arrays, {"suite": "dmc", "env": "walker-walk", "source": "synthetic"})


class PlainStore(SkillStore):
    """The store actor's one extra call, for stages run without Ray."""

    def register_once(self, name, kind, config, tensors, **kwargs):
        if self.exists(name):
            return self.entry(name), False
        return self.register(name, kind, config, tensors, **kwargs), True


def tiny_task(name, role="skill", steps=40, composers=(), env="walker-walk", train=None,
              **extra):
    """A task on the synthetic dataset `<name>-data`, evaluated for 1 short episode."""
    return {"name": name, "suite": "dmc", "env": env, "role": role,
            "data": {"source": "store", "dataset": f"{name}-data"},
            "train": train or {"steps": steps, "batch_size": 32},
            "composers": [{"steps": 20, **c} for c in composers],
            "eval": {"episodes": 1, "seeds": [0], "max_steps": 10}, **extra}


def write_stream(path, tasks, name="tiny", continual=True):
    data = {"name": name, "continual": continual, "tasks": tasks,
            "scales": {"smoke": {}, "paper": {}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def put_datasets(store_uri, tasks):
    """Store the synthetic dataset of every task (distinct seeds per task)."""
    store = SkillStore(store_uri)
    for index, task in enumerate(tasks):
        name = task["data"]["dataset"]
        if not store.has_dataset(name):
            store.put_dataset(name, synthetic_table(seed=index))
    return store


def register_base(store_uri, name, dataset_name):
    """An untrained base on a stored dataset's normaliser, registered without Ray (for
    tests whose subject is what comes after the base)."""
    import torch

    from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
    from library.serialization import dump_base
    from tasks.dataset import to_offline_data

    store = SkillStore(store_uri)
    data = to_offline_data(store.get_dataset(dataset_name))
    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(obs_dim=data.obs_dim, act_dim=data.act_dim),
                             StateNormalizer.from_data(data.obs))
    config, tensors = dump_base(policy)
    return store.register(name, "base", config, tensors)


def stand_base_with_walk_skill(store_uri, tasks, store_class=SkillStore, walk_spec=None):
    """Store the datasets of `tasks` (the first is `stand`), an untrained base `stand` on
    its normaliser, and a trained-looking rank-4 skill `walk` on it (registered with
    `walk_spec` as its task spec when given). Returns the store as `store_class`."""
    from library_builders import add_trained_looking_skill

    from library.serialization import dump_skill, load_base

    put_datasets(store_uri, tasks)
    register_base(store_uri, "stand", "stand-data")
    store = store_class(store_uri)
    policy = load_base(*store.load("stand"))
    add_trained_looking_skill(policy, "walk", seed=5)
    store.register("walk", "skill", *dump_skill(policy, "walk", base_name="stand"),
                   parent="stand", task_spec=walk_spec)
    return store


def snapshot(root):
    """Every file under root with its size and mtime: 'store unchanged' means equal."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            found[path] = (os.path.getsize(path), os.path.getmtime(path))
    return found


def fit_base_killed_once(store_uri, stream_path, steps, fail_step, single_worker, **extra):
    """A one-task stream whose base "stand" (`steps` steps, a checkpoint every 10; `extra`
    task fields) has its worker killed once at the first progress report at or after
    `fail_step`; runs it with `single_worker` and returns (plan, summary)."""
    from pipeline.driver import DriverOptions, run_plan
    from pipeline.fit_job import FailurePoint, FitOptions
    from pipeline.plan import plan_stream
    from tasks.spec import load_stream

    tasks = [tiny_task("stand", role="base", steps=steps, **extra)]
    put_datasets(store_uri, tasks)
    plan = plan_stream(load_stream(write_stream(stream_path, tasks)))
    options = DriverOptions(progress=False, fit=FitOptions(
        log_every=10, checkpoint_every=10, max_failures=2, single_worker=single_worker,
        fail_at=FailurePoint(stage="stand", step=fail_step)))
    return plan, run_plan(plan, store_uri, options)

