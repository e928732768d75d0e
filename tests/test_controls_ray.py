"""The controls through the real pipeline on a 2-CPU Ray instance: an untrained uniform
composer and a random-LoRA bank are fitted, registered, evaluated and tagged."""

import pytest
import torch
from library_builders import add_trained_looking_skill
from pipeline_builders import put_datasets, register_base, tiny_task

from library.serialization import dump_skill, load_base
from library.store import SkillStore
from pipeline.driver import DriverOptions, run_plan
from pipeline.plan import plan_task
from pipeline.stages import load_composer, random_skill_name
from tasks.spec import parse_task

torch.set_num_threads(1)


@pytest.mark.slow
def test_uniform_and_random_bank_controls_run_end_to_end(ray_cluster, tmp_path):
    uri = str(tmp_path / "store")
    run = tiny_task("run", steps=5, composers=[
        {"name": "uniform", "skills": ["base", "walk"], "mode": "fixed", "steps": 0},
        {"name": "noise", "skills": ["base", "walk"], "steps": 5, "bank": "random"}])
    put_datasets(uri, [tiny_task("stand"), run])
    register_base(uri, "stand", "stand-data")
    store = SkillStore(uri)
    policy = load_base(*store.load("stand"))
    add_trained_looking_skill(policy, "walk", seed=5)
    store.register("walk", "skill", *dump_skill(policy, "walk", base_name="stand"),
                   parent="stand")
    plan = plan_task(parse_task({**run, "base": "stand"}), ["stand"], stream="controls")
    options = DriverOptions(progress=False, result_tags={"search": "s", "trial": "t"})
    summary = run_plan(plan, uri, options)

    stand_in = random_skill_name("noise", "walk")
    assert set(summary.fitted) == {"run", "uniform", "noise"}
    assert store.entry("uniform").metrics["train_steps"] == 0
    obs = torch.randn(4, 24)
    assert torch.equal(load_composer(store, "uniform").alpha(obs), torch.full((4, 3), 1 / 3))
    assert load_composer(store, "noise").skills == ["base", stand_in, "run"]
    rows = {r["name"]: r for r in store.results().to_pylist()}
    assert set(rows) == {"run", "uniform", "noise"}
    assert all(r["search"] == "s" and r["trial"] == "t" for r in rows.values())
    assert rows["noise"]["skills"] == ["base", stand_in, "run"]
