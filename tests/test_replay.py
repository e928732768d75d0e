"""Continual re-evaluations of frozen items are replayed from their first rollout, and an
item another stream of the store rolled out with the same settings is copied from that
rollout (pipeline/replay.py); never from a rollout of an item stored since.

End to end: tests/test_pipeline_dmc.py rolls every re-evaluation out (`replay=False`) and
finds the first rollout's figures bit for bit, which is what a replay relies on;
tests/test_cw10.py replays them and checks the rows."""

import pytest
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


def test_another_stream_s_rollout_with_the_same_settings_is_recalled_and_no_other(tmp_path):
    """Trials of a search are streams of one store: a composer trial copies its stored new
    skill's evaluation from the trial that made it, when the settings match."""
    from pipeline.evaluation import rollout_digest

    store = stand_base_with_walk_skill(str(tmp_path / "s"), [tiny_task("stand", role="base")])
    digest = rollout_digest(WALK)
    earlier = "2000-01-01T00:00:00+00:00"
    rows = [result(stream="trial-a", value=7.0, rollout=digest),
            result(stream="trial-a", seed=1, rollout="0" * 8),       # other settings
            result(stream="trial-a", seed=2),                        # recorded before digests
            result(stream="trial-a", seed=3, rollout=digest, time=earlier)]  # before the item
    rollouts = Rollouts.from_store("trial-b", rows, store.list())
    origin, per_seed = rollouts.recall_shared(job())
    assert origin == "trial-a/walk" and per_seed[0]["return_mean"] == 7.0
    assert rollouts.recall(job()) is None  # the continual replay stays within its stream
    for seeds in ((1,), (2,), (3,), (0, 1)):
        assert rollouts.recall_shared(job(seeds=seeds)) is None
    # Candidates per state, the step cap, the env's dynamics: each is part of the digest.
    for change in ({"eval": {**WALK.eval.model_dump(), "n_candidates": 64}},
                   {"eval": {**WALK.eval.model_dump(), "max_steps": 11}},
                   {"dynamics": {"friction": 0.5}}):
        other = parse_task({**WALK.model_dump(mode="json"), **change})
        assert rollout_digest(other) != digest
        assert rollouts.recall_shared(EvalJob(item="walk", task=other, row_task="run",
                                              position=2, seeds=[0])) is None
    # A copy names the rollout it copies, not itself.
    copied = [result(stream="trial-b", rollout=digest, replay_of="trial-a/walk")]
    again = Rollouts.from_store("trial-c", copied, store.list())
    assert again.recall_shared(job())[0] == "trial-a/walk"


@pytest.mark.slow
def test_a_second_stream_on_the_store_copies_the_stored_items_evaluations(ray_cluster, tmp_path):
    """Through the driver: stream "two" finds "one"'s skill and composer stored and records
    their evaluations as copies (same figures as rolling them out again, which
    `replay=False` still does); other rollout settings are rolled out."""
    import torch

    from pipeline.driver import DriverOptions, run_plan
    from pipeline.plan import plan_task

    torch.set_num_threads(1)
    uri = str(tmp_path / "store")
    run = tiny_task("run", steps=5, composers=[{"name": "mix", "skills": ["base", "walk"],
                                                "steps": 5}])
    store = stand_base_with_walk_skill(uri, [tiny_task("stand"), run])

    def rows_of(stream, eval_spec=None):
        task = parse_task({**run, "base": "stand", **({"eval": eval_spec} if eval_spec else {})})
        options = DriverOptions(progress=False, replay=stream != "unreplayed")
        summary = run_plan(plan_task(task, ["stand"], stream=stream), uri, options)
        rows = {r["name"]: r for r in store.results().to_pylist() if r["stream"] == stream}
        return summary, rows

    first, one = rows_of("one")
    assert set(one) == {"run", "mix"} and first.replayed == 0
    assert all(r["replay_of"] is None and r["rollout"] for r in one.values())
    second, two = rows_of("two")
    assert not second.fitted and second.replayed == 2
    assert {r["replay_of"] for r in two.values()} == {"one/run"}
    _, fresh = rows_of("unreplayed")
    figures = ("return_mean", "return_std", "score", "cost", "episodes")
    for name in ("run", "mix"):
        assert fresh[name]["replay_of"] is None
        assert [two[name][f] for f in figures] == [fresh[name][f] for f in figures] \
            == [one[name][f] for f in figures]
    # Another step cap: other episodes, rolled out.
    _, capped = rows_of("capped", {"episodes": 1, "seeds": [0], "max_steps": 7})
    assert all(r["replay_of"] is None and r["rollout"] != one[r["name"]]["rollout"]
               for r in capped.values())
