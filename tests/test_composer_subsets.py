"""ComposerSpec.data: a composer trains on a subset of its task's episodes."""

import re

import numpy as np
import pytest
import torch
from pipeline_builders import put_datasets, register_base, synthetic_table, tiny_task

from library.errors import DataError, SpecError
from pipeline.plan import plan_task
from pipeline.stages import UnitContext
from tasks.dataset import dataset_meta, to_arrays, to_table
from tasks.spec import parse_task
from tasks.spec_sections import ComposerData
from tasks.subsets import composer_subset

torch.set_num_threads(1)


def _episodes_table(returns, costs):
    """One 4-step episode per entry: every step earns return/4 and costs cost/4."""
    n = 4 * len(returns)
    per_step = np.repeat(np.asarray(returns, np.float32) / 4, 4)
    cost = np.repeat(np.asarray(costs, np.float32) / 4, 4)
    obs = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    arrays = dict(obs=obs, actions=np.zeros((n, 1), np.float32), rewards=per_step,
                  costs=cost, next_obs=obs + 1, terminals=np.zeros(n, bool),
                  timeouts=np.arange(n) % 4 == 3)
    return to_table(arrays, {"suite": "bullet_safety", "env": "SafetyBallRun-v0"})


def _kept_returns(table):
    arrays = to_arrays(table)
    _, first = np.unique(arrays["episode"], return_index=True)
    return [float(arrays["rewards"][i:i + 4].sum()) for i in sorted(first)]


TABLE = _episodes_table(returns=[10, 50, 30, 40, 20], costs=[0, 30, 5, 0, 12])


def test_the_default_subset_is_the_whole_dataset():
    assert ComposerData().selects_all
    assert composer_subset(TABLE, ComposerData(), "c") is TABLE


def test_safe_top_episodes_keep_the_best_returns_among_the_low_cost_ones_in_order():
    subset = composer_subset(TABLE, ComposerData(top_episodes=2, max_episode_cost=10), "c")
    assert _kept_returns(subset) == [30.0, 40.0]  # 50 costs 30, 20 costs 12
    assert dataset_meta(subset)["composer_subset"]["episodes"] == 2


def test_a_fraction_keeps_the_first_whole_episodes_and_at_least_one():
    assert _kept_returns(composer_subset(TABLE, ComposerData(fraction=0.4), "c")) == [10, 50]
    assert _kept_returns(composer_subset(TABLE, ComposerData(fraction=0.01), "c")) == [10]


def test_no_qualifying_episode_is_a_one_line_error_naming_the_composer():
    with pytest.raises(DataError, match=r"composer 'safe'.*cost <= 0.*lowest: 1") as error:
        composer_subset(_episodes_table([1, 2], [1, 3]), ComposerData(max_episode_cost=0),
                        "safe")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("data, field", [
    ({"fraction": 0}, "composers[0].data.fraction"),
    ({"fraction": 1.5}, "composers[0].data.fraction"),
    ({"top_episodes": 0}, "composers[0].data.top_episodes"),
    ({"max_episode_cost": -1}, "composers[0].data.max_episode_cost"),
    ({"top": 3}, "composers[0].data.top"),
])
def test_bad_subset_fields_are_named(data, field):
    task = {**tiny_task("run", composers=[{"name": "c", "skills": ["base"], "data": data}]),
            "base": "stand"}
    with pytest.raises(SpecError, match=re.escape(field)):
        parse_task(task)


def test_a_composer_stage_trains_on_its_subset_and_the_skill_on_everything(tmp_path):
    uri = str(tmp_path / "store")
    tasks = [tiny_task("stand", role="base"), tiny_task("run")]
    store = put_datasets(uri, tasks)
    register_base(uri, "stand", "stand-data")
    task = parse_task({**tiny_task("run", composers=[
        {"name": "few", "skills": ["base"], "data": {"fraction": 0.25}}]), "base": "stand"})
    (unit,) = plan_task(task, ["stand"]).units.values()
    context = UnitContext(store, unit, torch.device("cpu"))
    skill, composer = unit.stages
    assert len(context.data_for(skill).obs) == 200  # 4 synthetic episodes of 50
    assert len(context.data_for(composer).obs) == 50


def test_a_unit_whose_subset_is_empty_fails_before_fitting_anything(tmp_path):
    uri = str(tmp_path / "store")
    store = put_datasets(uri, [tiny_task("stand", role="base")])
    register_base(uri, "stand", "stand-data")
    costly = to_arrays(synthetic_table(seed=1))
    costly["costs"] = np.ones(len(costly["rewards"]), np.float32)  # 50 per episode
    store.put_dataset("run-data", to_table(costly, {"suite": "dmc", "env": "walker-walk"}))
    task = parse_task({**tiny_task("run", composers=[
        {"name": "safe", "skills": ["base"], "data": {"max_episode_cost": 10}}]),
        "base": "stand"})
    (unit,) = plan_task(task, ["stand"]).units.values()
    assert [stage.kind for stage in unit.stages] == ["skill", "composer"]
    with pytest.raises(DataError, match="composer 'safe'"):
        UnitContext(store, unit, torch.device("cpu"))  # the skill stage never starts
