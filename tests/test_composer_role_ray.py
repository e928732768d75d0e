"""A composer task through the real pipeline on a 2-CPU Ray instance: its composers are
fitted over a stored skill, evaluated in every env of `eval.envs` beside its `single`
controls (the base and the stored skill alone), and a rerun finds every evaluation
recorded."""

import time

import pytest
import torch
from pipeline_builders import stand_base_with_walk_skill, tiny_task

from pipeline.driver import DriverOptions, run_plan
from pipeline.plan import plan_task
from tasks.spec import parse_task

torch.set_num_threads(1)


@pytest.mark.slow
def test_a_composer_task_fits_its_composers_and_is_evaluated_in_its_eval_envs_with_controls(
        ray_cluster, tmp_path):
    uri = str(tmp_path / "store")
    zero = tiny_task("zero", role="composer", base="stand", composers=[
        {"name": "zero-psec", "skills": ["base", "walk"], "steps": 5,
         "data": {"fraction": 0.5}},
        {"name": "zero-nsec", "skills": ["walk"], "mode": "noise", "steps": 5}],
        eval={"episodes": 1, "seeds": [0], "max_steps": 5,
              "envs": ["walker-walk", "walker-run"], "controls": ["single"]})
    store = stand_base_with_walk_skill(uri, [tiny_task("stand"), zero])
    plan = plan_task(parse_task(zero), ["stand"], stream="unseen")
    started = time.perf_counter()
    summary = run_plan(plan, uri, DriverOptions(progress=False))
    print(f"composer task end to end: {time.perf_counter() - started:.1f} s")

    assert sorted(summary.fitted) == ["zero-nsec", "zero-psec"]
    assert not store.exists("zero")  # a composer task stores no skill of its own
    # The psec composer trained on half of the 4 synthetic episodes (200 transitions).
    assert store.entry("zero-psec").metrics["train_transitions"] == 100
    rows = store.results().to_pylist()
    assert sorted((r["name"], r["env"]) for r in rows) == [
        ("stand", "walker-run"), ("stand", "walker-walk"),
        ("walk", "walker-run"), ("walk", "walker-walk"),
        ("zero-nsec", "walker-run"), ("zero-nsec", "walker-walk"),
        ("zero-psec", "walker-run"), ("zero-psec", "walker-walk")]
    assert {(r["task"], r["eval_task"]) for r in rows} == {("zero", "zero")}
    controls = {r["name"]: (r["kind"], r["composer"]) for r in rows
                if r["name"] in ("stand", "walk")}
    assert controls == {"stand": ("base", None), "walk": ("skill", None)}
    assert {r["method"] for r in rows if r["kind"] == "composer"} == {"psec", "nsec"}
    # The summary lists the controls beside the composers, each where it was rolled out
    # ('' for the task's own env, walker-walk).
    assert sorted((s.name, s.env) for s in summary.scores if s.name in ("stand", "walk")) == [
        ("stand", ""), ("stand", "walker-run"), ("walk", ""), ("walk", "walker-run")]
    again = run_plan(plan, uri, DriverOptions(progress=False))
    assert again.fitted == [] and again.evaluations == 0
