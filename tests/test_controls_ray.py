"""The controls through the real pipeline on a 2-CPU Ray instance: an untrained uniform
composer and a random-LoRA bank are fitted, registered, evaluated and tagged."""

import pytest
import torch
from pipeline_builders import stand_base_with_walk_skill, tiny_task

from pipeline.acting import load_composer
from pipeline.driver import DriverOptions, run_plan
from pipeline.plan import plan_task
from pipeline.stages import random_skill_name
from tasks.spec import parse_task

torch.set_num_threads(1)


@pytest.mark.slow
def test_uniform_and_random_bank_controls_run_end_to_end(ray_cluster, tmp_path):
    uri = str(tmp_path / "store")
    run = tiny_task("run", steps=5, composers=[
        {"name": "uniform", "skills": ["base", "walk"], "mode": "fixed", "steps": 0,
         "alpha": {"init": "uniform"}},
        {"name": "noise", "skills": ["base", "walk"], "steps": 5, "bank": "random"}])
    store = stand_base_with_walk_skill(uri, [tiny_task("stand"), run])
    plan = plan_task(parse_task({**run, "base": "stand"}), ["stand"], stream="controls")
    options = DriverOptions(progress=False, result_tags={"search": "s", "trial": "t"})
    summary = run_plan(plan, uri, options)

    stand_in = random_skill_name("noise", "walk")
    assert set(summary.fitted) == {"run", "uniform", "noise"}
    assert store.entry("uniform").metrics["train_steps"] == 0
    obs = torch.randn(4, 24)
    # walk and run at 1/2 each: W0 is in every layer and has no weight of its own.
    assert torch.equal(load_composer(store, "uniform").alpha(obs), torch.full((4, 2), 1 / 2))
    assert load_composer(store, "noise").skills == [stand_in, "run"]  # W0 has no weight
    rows = {r["name"]: r for r in store.results().to_pylist()}
    assert set(rows) == {"run", "uniform", "noise"}
    assert all(r["search"] == "s" and r["trial"] == "t" for r in rows.values())
    assert rows["noise"]["skills"] == ["base", stand_in, "run"]
