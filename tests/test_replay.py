"""Continual re-evaluations of frozen items are replayed from their first rollout
(pipeline/replay.py), never from a rollout of an item stored since.

End to end: tests/test_pipeline_dmc.py rolls every re-evaluation out (`replay=False`) and
finds the first rollout's figures bit for bit, which is what a replay relies on;
tests/test_cw10.py replays them and checks the rows."""

from pipeline_builders import stand_base_with_walk_skill, tiny_task

from pipeline.evaluation import EvalJob
from pipeline.replay import Rollouts
from pipeline.results import now, row_figures, summary_of
from tasks.spec import parse_task

WALK = parse_task(tiny_task("walk"))


def result(stream="cw", task="walk", name="walk", seed=0, time=None, value=1.0, **extra):
    return {"stream": stream, "task": task, "name": name, "eval_task": "walk",
            "env": "walker-walk", "seed": seed, "episodes": 1, "return_mean": value,
            "return_std": 0.0, "score": value, "success": 0.0, "cost": 0.0,
            "time": time or now(), **extra}


def job(seeds=(0,), row_task="run"):
    return EvalJob(item="walk", task=WALK, row_task=row_task, position=2, seeds=list(seeds))


def test_stored_rollouts_of_the_stored_item_are_recalled_and_no_others(tmp_path):
    store = stand_base_with_walk_skill(str(tmp_path / "s"), [tiny_task("stand", role="base")])
    earlier = "2000-01-01T00:00:00+00:00"  # before the items were stored
    rows = [result(value=7.0), result(stream="other", seed=1),
            result(seed=2, time=earlier), result(seed=3, task="run", replay_of="walk")]
    rollouts = Rollouts.from_store("cw", rows, store.list())
    assert rollouts.recall(job()) == ("walk", {0: {
        "episodes": 1.0, "return_mean": 7.0, "return_std": 0.0, "score_mean": 7.0,
        "success_rate": 0.0, "cost_mean": 0.0}})
    assert rollouts.recall(job(seeds=(3,)))[0] == "walk"  # a replay names the first rollout
    # Another stream's row, a row older than the item, a seed never rolled out, or other
    # episodes: rolled out.
    for seeds in ((1,), (2,), (0, 4)):
        assert rollouts.recall(job(seeds=seeds)) is None
    assert rollouts.recall(EvalJob(item="walk", task=WALK, row_task="run", position=2,
                                   seeds=[0], episodes=5)) is None


def test_a_row_older_than_the_base_the_item_builds_on_is_not_recalled(tmp_path):
    store = stand_base_with_walk_skill(str(tmp_path / "s"), [tiny_task("stand", role="base")])
    rows = [result()]
    assert Rollouts.from_store("cw", rows, store.list()).recall(job()) is not None
    # The base stored again (same name) after the row was recorded: the row is stale.
    entries = {entry.name: entry for entry in store.list()}
    later = entries["stand"].model_copy(update={"created": "2999-01-01T00:00:00+00:00"})
    assert Rollouts.from_store("cw", rows, [later, entries["walk"]]).recall(job()) is None


def test_a_remembered_rollout_is_recalled_for_every_seed_it_covers():
    rollouts = Rollouts()
    stats = {0: {"score_mean": 0.5}, 1: {"score_mean": 0.7}}
    rollouts.remember(job(seeds=(0, 1), row_task="walk"), stats)
    assert rollouts.recall(job(seeds=(1,))) == ("walk", {1: {"score_mean": 0.7}})
    assert rollouts.recall(job(seeds=(0, 1, 2))) is None


def test_a_row_s_figures_turn_back_into_the_summary_they_came_from():
    summary = {"episodes": 10.0, "return_mean": 812.5, "return_std": 3.25, "score_mean": 0.9,
               "success_rate": 0.9, "cost_mean": 0.0, "score_std": 0.1}
    figures = row_figures(summary)
    assert figures == {"episodes": 10, "return_mean": 812.5, "return_std": 3.25,
                       "score": 0.9, "success": 0.9, "cost": 0.0}
    assert summary_of(figures) == {k: v for k, v in summary.items() if k != "score_std"}
