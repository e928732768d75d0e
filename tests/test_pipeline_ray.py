"""The pipeline on a 2-CPU Ray instance: the store actor, a fault that kills a fit's
worker on purpose and the resume from its checkpoint (a one-worker unit as a plain task and
as a TorchTrainer), and the serve/submit round trip."""

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest
import torch
import yaml
from pipeline_builders import (
    fit_base_killed_once,
    put_datasets,
    register_base,
    tiny_task,
    write_stream,
)

from library.errors import StoreError
from library.store import SkillStore
from pipeline.checkpoints import checkpoint_root
from pipeline.driver import DriverOptions, run_plan
from pipeline.fit_job import FitOptions
from pipeline.plan import plan_stream
from pipeline.serving import serve, submit
from pipeline.stages import UnitContext
from pipeline.store_actor import StoreHandle
from tasks.spec import load_stream

torch.set_num_threads(1)
pytestmark = pytest.mark.slow  # every test runs fits on Ray (about 6 minutes in all)


def test_store_actor_serialises_registrations_and_keeps_errors_one_line(ray_cluster, tmp_path):
    store = StoreHandle(str(tmp_path / "store"))
    tensors = {"w": torch.ones(3)}
    config = {"kind": "base"}

    def register(name):
        try:
            store.register(name, "base", config, tensors)
            return name
        except StoreError as error:
            return str(error)

    names = [f"item{i}" for i in range(6)] + ["same"] * 6
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(register, names))
    assert outcomes[:6] == names[:6]
    # Six registrations of one name: exactly one wins, the others get a one-line error.
    assert outcomes[6:].count("same") == 1
    assert all("already in the store" in o for o in outcomes[6:] if o != "same")
    assert {e.name for e in SkillStore(store.uri).list()} == set(names)
    entry, created = store.register_once("same", "base", config, tensors)
    assert not created and entry.name == "same"
    with pytest.raises(StoreError, match="no item named 'ghost'"):
        store.load("ghost")


def test_tasks_on_one_generated_table_generate_it_once_and_each_stores_it(ray_cluster, tmp_path):
    data = {"source": "generate", "policy": "random", "episodes": 2}  # the same spec twice
    tasks = [{**tiny_task("stand", role="base", steps=10), "horizon": 20, "data": data},
             {**tiny_task("walk", steps=10), "horizon": 20, "data": data}]
    store_uri = str(tmp_path / "store")
    plan = plan_stream(load_stream(write_stream(tmp_path / "s.yaml", tasks)))
    summary = run_plan(plan, store_uri, DriverOptions(progress=False))
    assert summary.fitted == ["stand", "walk"]
    assert list(summary.dataset_seconds) == ["stand"]  # one generation, for both tasks
    store = SkillStore(store_uri)
    assert store.get_dataset("stand").num_rows == 40
    assert store.get_dataset("walk").equals(store.get_dataset("stand"))


@pytest.mark.parametrize("single_worker", ["task", "trainer"])
def test_a_killed_worker_resumes_from_its_last_checkpoint(ray_cluster, tmp_path, single_worker):
    store_uri = str(tmp_path / "store")
    plan, summary = fit_base_killed_once(store_uri, tmp_path / "s.yaml", steps=60,
                                         fail_step=35, single_worker=single_worker)

    assert summary.fitted == ["stand"]
    metrics = SkillStore(store_uri).entry("stand").metrics
    # The worker died at step 40, before that step's checkpoint: the restarted group
    # resumed from a checkpoint before it, not from scratch.
    assert metrics["resumed_from"] in (10, 20, 30)
    assert metrics["train_steps"] == 60
    assert os.path.exists(os.path.join(checkpoint_root(store_uri), "tiny__stand-failed-once"))
    # The checkpoints of a finished unit are gone: the store is the record.
    assert not os.path.exists(os.path.join(checkpoint_root(store_uri), "tiny__stand"))

    # Resuming restored learner, EMA and Adam state: the stored EMA and the last iterate
    # kept beside it equal an uninterrupted run's (on the same learning-rate schedule).
    from library.serialization import LAST_PREFIX, dump_base
    from library.training import train
    from pipeline.unit_loop import lr_decay_steps

    unit = plan.units["stand"]
    stage = unit.stages[0]
    context = UnitContext(SkillStore(store_uri), unit, torch.device("cpu"))
    torch.manual_seed(stage.seed)
    learner = context.build(stage)
    train(learner, context.data, stage.steps, stage.batch_size, stage.lr, seed=stage.seed,
          log_every=10, lr_decay_steps=lr_decay_steps(stage, unit.task))
    _, last = dump_base(learner.policy)
    with learner.ema_weights():
        _, ema = dump_base(learner.policy)
    config, stored = SkillStore(store_uri).load("stand")
    assert config["weights"] == "ema" and config["ema_rate"] == learner.ema_rate
    for key, value in ema.items():
        torch.testing.assert_close(stored[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(stored[LAST_PREFIX + key], last[key], rtol=0, atol=0, msg=key)


def test_serve_fits_submitted_tasks_and_refuses_bad_ones(ray_cluster, tmp_path):
    store_uri = str(tmp_path / "store")
    walk = tiny_task("walk", steps=20, composers=[{"name": "s2w", "skills": ["base"]}])
    put_datasets(store_uri, [walk])
    register_base(store_uri, "stand", "walk-data")

    served: list[int] = []
    server = threading.Thread(target=lambda: served.append(
        serve(store_uri, max_tasks=1, poll=0.2, options=DriverOptions(progress=False))))
    server.start()
    spec = tmp_path / "walk.yaml"
    spec.write_text(yaml.safe_dump(walk))
    submission = submit(str(spec), store_uri, wait=True, poll=0.5)
    server.join(timeout=300)

    assert served == [1]
    assert submission.status == "done", submission.message
    assert "fitted walk, s2w" in submission.message
    store = SkillStore(store_uri)
    assert store.entry("walk").parent == "stand" and store.exists("s2w")
    rows = store.results().to_pylist()
    assert {(r["stream"], r["name"]) for r in rows} >= {("served", "walk"), ("served", "s2w")}
    # The same task again is refused at submit time: its names are taken.
    with pytest.raises(StoreError, match="already in the store"):
        submit(str(spec), store_uri)


def test_a_fit_with_two_workers_averages_gradients_across_them(ray_cluster, tmp_path):
    tasks = [tiny_task("stand", role="base", train={"steps": 30, "batch_size": 32, "workers": 2})]
    store_uri = str(tmp_path / "store")
    put_datasets(store_uri, tasks)
    plan = plan_stream(load_stream(write_stream(tmp_path / "s.yaml", tasks)))
    summary = run_plan(plan, store_uri, DriverOptions(progress=False))
    assert summary.fitted == ["stand"]
    metrics = SkillStore(store_uri).entry("stand").metrics
    assert metrics["workers"] == 2 and metrics["train_steps"] == 30


@pytest.mark.parametrize("single_worker", ["task", "trainer"])
def test_a_user_error_in_a_fit_is_raised_once_and_keeps_what_was_stored(ray_cluster, tmp_path,
                                                                        single_worker):
    import numpy as np
    from pipeline_builders import register_base, synthetic_table

    from library.errors import DataError
    from pipeline.plan import plan_task
    from tasks.dataset import to_arrays, to_table
    from tasks.spec import parse_task

    # The base is stored beforehand (no fit of its own: one trainer start fewer), and the
    # task runs on it as a one-task plan.
    tasks = [tiny_task("run", base="stand", composers=[
        {"name": "safe", "skills": ["base"], "data": {"max_episode_cost": 1}}])]
    store_uri = str(tmp_path / "store")
    store = put_datasets(store_uri, [tiny_task("stand", role="base")])
    register_base(store_uri, "stand", "stand-data")
    costly = to_arrays(synthetic_table(seed=1))
    costly["costs"] = np.ones(len(costly["rewards"]), np.float32)  # 50 per episode
    store.put_dataset("run-data", to_table(costly, {"suite": "dmc", "env": "walker-walk"}))
    plan = plan_task(parse_task(tasks[0]), ["stand"], stream="tiny")
    with pytest.raises(DataError, match=r"composer 'safe'.*cost <= 1") as error:
        run_plan(plan, store_uri, DriverOptions(progress=False, fit=FitOptions(
            max_failures=3, single_worker=single_worker)))
    assert "\n" not in str(error.value)
    assert [entry.name for entry in SkillStore(store_uri).list()] == ["stand"]
    # The failing unit left no checkpoints behind.
    assert not os.path.exists(os.path.join(checkpoint_root(store_uri), "tiny__run"))


def test_a_fit_that_diverges_names_item_and_step_and_keeps_its_checkpoints(ray_cluster,
                                                                            tmp_path):
    from library.errors import DataError

    # An absurd learning rate: the loss turns non-finite within the first steps.
    tasks = [tiny_task("stand", role="base", steps=20),
             tiny_task("walk", base="stand", train={"steps": 200, "batch_size": 32,
                                                   "lr": 1e30})]
    store_uri = str(tmp_path / "store")
    put_datasets(store_uri, tasks)
    plan = plan_stream(load_stream(write_stream(tmp_path / "s.yaml", tasks)))
    with pytest.raises(DataError, match=r"^walk: training diverged: the (loss|weights) .* step "
                                        r"\d+ .*nothing registered, its checkpoints are kept") as error:
        run_plan(plan, store_uri, DriverOptions(progress=False, fit=FitOptions(
            max_failures=3, checkpoint_every=1, log_every=10)))
    assert "\n" not in str(error.value)
    assert [entry.name for entry in SkillStore(store_uri).list()] == ["stand"]
    kept = os.path.join(checkpoint_root(store_uri), "tiny__walk")
    assert os.path.isdir(kept) and os.listdir(kept)


def test_psec_eval_rolls_a_stored_item_out_in_its_env_or_another(ray_cluster, tmp_path):
    from library.serialization import dump_base, load_base
    from pipeline.evaluation import evaluate_stored
    from tasks.spec import parse_task

    store_uri = str(tmp_path / "store")
    spec = tiny_task("stand", role="base")
    store = put_datasets(store_uri, [spec])
    register_base(store_uri, "stand-untagged", "stand-data")
    config, tensors = store.load("stand-untagged")
    store.register("stand", "base", *dump_base(load_base(config, tensors)),
                   task_spec=parse_task(spec).model_dump(mode="json"))
    own = evaluate_stored(store_uri, "stand", episodes=1, seeds=[0, 1])
    other = evaluate_stored(store_uri, "stand", episodes=1, seeds=[0], env="walker-run")
    assert own.task == "stand" and sorted(own.per_seed) == [0, 1]
    assert other.task == "stand [walker-run]" and list(other.per_seed) == [0]
    assert "stand [walker-run]: normalised score" in other.describe()
    assert f"1 episodes of {other.per_seed[0]['length_mean']:.0f} steps on average" \
        in other.describe()


def test_fits_are_admitted_up_to_concurrent_fits_and_evaluations_go_between(ray_cluster,
                                                                            tmp_path):
    # Three skills on a stored base, two fits at a time (one CPU each, as on any 2-CPU
    # machine): the driver launches a fit only when one ends, after queueing the
    # evaluations of the one that ended. Launched all at once, a third fit started on the
    # CPU a fit releases while it waits on the store, and the evaluations ran after the
    # last fit.
    store_uri = str(tmp_path / "store")
    skills = [("walk", "walker-walk"), ("run", "walker-run"), ("stand2", "walker-stand")]
    tasks = [tiny_task("stand", role="base")] + [tiny_task(name, env=env) for name, env in skills]
    put_datasets(store_uri, tasks)
    register_base(store_uri, "stand", "stand-data")
    plan = plan_stream(load_stream(write_stream(tmp_path / "s.yaml", tasks, continual=False)))
    summary = run_plan(plan, store_uri, DriverOptions(progress=False))
    windows = sorted(summary.unit_windows[name] for name, _ in skills)
    for start, _ in windows:  # never more than two training at once
        assert sum(a <= start < b for a, b in windows) <= 2, windows
    first = min(skills, key=lambda skill: summary.unit_windows[skill[0]][1])[0]
    [row] = [r for r in SkillStore(store_uri).results().to_pylist() if r["name"] == first]
    assert datetime.fromisoformat(row["time"]).timestamp() <= windows[-1][1], (row, windows)
