"""scripts/alpha_score_sweep.py: a parameter-level composer's base + skill at constant α,
rolled out as the task's evaluation does, with the composer's loss there."""

import json

import pytest
import torch
from library_builders import add_trained_looking_skill
from pipeline_builders import PlainStore, stand_base_with_walk_skill, tiny_task
from script_modules import load_script

from library.critics import CriticConfig, IQLCritics
from library.serialization import dump_critics, dump_skill, load_base, split_item
from pipeline.evaluation import roll_episodes
from pipeline.plan import plan_task
from pipeline.stages import UnitContext
from tasks.spec import dump, parse_task

sweep = load_script("alpha_score_sweep")


@pytest.fixture
def composed(tmp_path):
    """A base `stand`, a stored skill `walk`, task `run`'s skill (trained-looking, so that
    it acts unlike the base) with IQL critics, evaluated with 4 candidates per state, and
    two untrained composers over walk + run: one in parameter mode, one in noise mode."""
    torch.set_num_threads(1)
    tasks = [tiny_task("stand", role="base"), tiny_task("walk"), tiny_task("run")]
    store = stand_base_with_walk_skill(str(tmp_path / "store"), tasks, store_class=PlainStore)
    task = parse_task({**tiny_task("run", steps=20, composers=[
        {"name": "mix", "skills": ["walk"], "steps": 0},
        {"name": "mix-noise", "skills": ["walk"], "mode": "noise", "steps": 0}]),
        "base": "stand", "eval": {"episodes": 2, "seeds": [0, 1], "max_steps": 30, "n_candidates": 4}})
    policy = load_base(*(lambda c, t: (c, split_item(t)[0]))(*store.load("stand")))
    add_trained_looking_skill(policy, "run", seed=9)
    config, tensors = dump_skill(policy, "run", base_name="stand")
    torch.manual_seed(3)
    iql = IQLCritics(CriticConfig(obs_dim=24, act_dim=6, hidden=8), policy.normalizer)
    store.register("run", "skill", {**config, "critics": {"iql": iql.config.to_dict()}},
                   {**tensors, **dump_critics(iql, None)}, parent="stand",
                   task_spec=task.model_dump(mode="json"))
    (unit,) = plan_task(task, ["stand"]).units.values()
    context = UnitContext(store, unit, torch.device("cpu"))
    for stage in unit.stages:
        if not store.exists(stage.name):  # the composers; the skill is the one above
            context.register(stage, context.build(stage), {"train_steps": stage.steps})
    return store, task


def _return(episodes) -> float:
    return sum(e.episode_return for e in episodes) / len(episodes)


def test_the_ends_of_the_sweep_are_the_base_alone_and_the_new_skill_alone(composed):
    store, task = composed
    for seed in task.eval.seeds:
        # The skill alone as its task evaluates it: 4 candidates ranked by its critic.
        skill = roll_episodes(store, "run", dump(task), seed, 0, task.eval.episodes)
        assert sweep.score_at(store.uri, "mix", 1.0, seed)["return_mean"] == pytest.approx(
            _return(skill), abs=1e-9)
        # The base has no critics of its own: one sample per state, as --candidates 1.
        base = roll_episodes(store, "stand", dump(task), seed, 0, task.eval.episodes)
        assert sweep.score_at(store.uri, "mix", 0.0, seed, candidates=1)["return_mean"] \
            == pytest.approx(_return(base), abs=1e-9)
    # With the task's candidates the base's actions are the ones the task's critic ranks best.
    assert sweep.score_at(store.uri, "mix", 0.0, 0)["return_mean"] != pytest.approx(
        _return(roll_episodes(store, "stand", dump(task), 0, 0, task.eval.episodes)), abs=1e-9)
    # Between them the policy is neither (the skill's adapters are not zero).
    halfway = sweep.score_at(store.uri, "mix", 0.5, 0)
    ends = [sweep.score_at(store.uri, "mix", c, 0)["return_mean"] for c in (0.0, 1.0)]
    assert halfway["return_mean"] not in ends


def test_the_loss_is_the_composers_own_and_the_same_draws_at_every_weight(composed):
    store, task = composed
    grid = [0.0, 0.5, 1.0]
    losses = sweep.losses_at(store.uri, "mix", "run-data", grid, batches=2, batch_size=16, seed=0)
    again = sweep.losses_at(store.uri, "mix", "run-data", [1.0], batches=2, batch_size=16, seed=0)
    assert again[1.0] == losses[1.0]  # common random numbers: a point does not depend on the grid
    # A BC task weighs every sample 1; the regulariser is zero where the composer starts
    # (the new skill alone: walk 0, run 1) and grows away from it.
    assert all(v["weighted_eps_loss"] == pytest.approx(v["eps_loss"]) for v in losses.values())
    assert losses[1.0]["regulariser"] == 0.0
    assert losses[0.0]["regulariser"] > losses[0.5]["regulariser"] > 0.0
    assert len({round(v["eps_loss"], 8) for v in losses.values()}) == 3


def test_main_prints_a_line_per_weight_and_the_table(composed, capsys):
    store, _ = composed
    assert sweep.main(["--store", store.uri, "--composer", "mix", "--grid", "0", "1",
                       "--batches", "1", "--batch-size", "8", "--markdown"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [json.loads(line) for line in out if line.startswith("{")]
    assert [(line["composer"], line["alpha"]) for line in lines] == [("mix", 0.0), ("mix", 1.0)]
    assert all(len(line["per_seed"]) == 2 for line in lines)
    table = [line for line in out if line.startswith("| ")]
    assert table[0].startswith("| α of the new skill") and len(table) == 2 + 2


def test_a_composer_that_does_not_compose_parameters_is_refused(composed):
    store, _ = composed
    with pytest.raises(SystemExit, match="parameter-level composers only"):
        sweep.score_at(store.uri, "mix-noise", 0.5, 0)
