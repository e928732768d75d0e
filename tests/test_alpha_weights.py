"""scripts/alpha_weights.py (a stored composer's α over its task's first states, or the
last values its fit logged) and pipeline.tblog's readers of those logs."""

import pytest
import torch
from pipeline_builders import PlainStore, stand_base_with_walk_skill, tiny_task
from script_modules import load_script

from library.errors import StoreError
from pipeline.plan import plan_task
from pipeline.stages import UnitContext
from pipeline.tblog import RunLog, item_runs, last_scalars, run_name
from tasks.spec import parse_task

alpha_weights = load_script("alpha_weights")


def test_the_last_logged_alpha_of_each_skill_is_read_back(tmp_path):
    store = str(tmp_path / "store")
    with RunLog(store, run_name("mix", "psec", 0)) as log:
        log.scalars({"a/mean": 0.5, "a/std": 0.2, "b/mean": 0.5, "b/std": 0.0}, 0,
                    prefix="alpha/")
        log.scalars({"a/mean": 0.9, "a/std": 0.1, "b/mean": -0.3, "b/std": 0.3}, 100,
                    prefix="alpha/")
        log.scalars({"loss": 1.0}, 100, prefix="train/")
    # Another item whose name starts like it is not its run.
    with RunLog(store, run_name("mix-2", "psec", 0)) as log:
        log.scalars({"a/mean": 0.0}, 0, prefix="alpha/")
    assert item_runs(store, "mix") == ["mix__psec__0"]
    values = last_scalars(store, "mix__psec__0", prefix="alpha/")
    assert values == pytest.approx({"a/mean": 0.9, "a/std": 0.1, "b/mean": -0.3, "b/std": 0.3})


def _store_with_composer(tmp_path):
    """A base `stand`, a skill `walk`, task `run`'s skill and an untrained uniform-α
    composer `mix` over walk + run (α = 1/2 each in every state), with run's data."""
    tasks = [tiny_task("stand", role="base"), tiny_task("walk"), tiny_task("run")]
    store = stand_base_with_walk_skill(str(tmp_path / "store"), tasks, store_class=PlainStore)
    task = parse_task({**tiny_task("run", steps=5, composers=[
        {"name": "mix", "skills": ["walk"], "steps": 0,
         "alpha": {"output": "raw", "init": "uniform"}}]), "base": "stand"})
    (unit,) = plan_task(task, ["stand"]).units.values()
    context = UnitContext(store, unit, torch.device("cpu"))
    for stage in unit.stages:
        context.register(stage, context.build(stage), {"train_steps": stage.steps})
    return store


def test_the_alpha_of_a_stored_composer_is_computed_from_its_weights(tmp_path, capsys):
    torch.set_num_threads(1)
    store = _store_with_composer(tmp_path)
    assert alpha_weights.main(["--store", store.uri, "mix", "walk", "absent"]) == 0
    out = capsys.readouterr().out
    # Σα 1, Σ|α| 1, no spread over states, the skills in their order (equal |α|).
    assert "| mix | 1.00 | 1.00 | 0.00 | walk +0.50, run +0.50 |" in out
    assert "| walk | — | — | — | not a stored composer |" in out
    assert "| absent | — | — | — | not a stored composer |" in out


def test_without_its_tasks_data_the_last_logged_alpha_is_read(tmp_path, monkeypatch, capsys):
    store = _store_with_composer(tmp_path)

    def no_data(store_uri, item):
        raise StoreError("no dataset named 'run-data' in the store")

    monkeypatch.setattr(alpha_weights, "stored_alpha", no_data)
    assert alpha_weights.weights_row(store.uri, "mix").endswith(
        "neither its task's data nor its run in the store |")
    with RunLog(store.uri, run_name("mix", "psec", 0)) as log:
        log.scalars({"walk/mean": 0.9, "walk/std": 0.1, "run/mean": -0.3, "run/std": 0.3}, 9,
                    prefix="alpha/")
    # Σα 0.6, Σ|α| 1.2, mean spread 0.2, the largest |α| first with its sign.
    assert alpha_weights.weights_row(store.uri, "mix") == \
        "| mix | 0.60 | 1.20 | 0.20 | walk +0.90, run -0.30 |"



def test_a_generated_dataset_left_out_of_the_store_is_generated_again_when_it_matches():
    from tasks.dataset import fingerprint
    from tasks.generators.generator import generate

    spec = {**tiny_task("run"), "horizon": 20,
            "data": {"source": "generate", "policy": "random", "episodes": 1, "seed": 3}}
    task = parse_task(spec)
    recorded = fingerprint(generate(task))
    again = alpha_weights.regenerated_table(task, recorded, "run-data")
    assert fingerprint(again) == recorded
    # Other data than the fit's (another seed, or no fingerprint recorded) are refused.
    with pytest.raises(StoreError, match="differs from the one the fit recorded"):
        alpha_weights.regenerated_table(parse_task({**spec, "data": {**spec["data"], "seed": 4}}),
                                        recorded, "run-data")
    with pytest.raises(StoreError, match="differs"):
        alpha_weights.regenerated_table(task, None, "run-data")
    # A task that takes its data from elsewhere cannot make them again.
    with pytest.raises(StoreError, match="does not generate its own"):
        alpha_weights.regenerated_table(parse_task(tiny_task("run")), recorded, "run-data")
