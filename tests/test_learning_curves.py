"""Learning curves measured while a base or skill trains (pipeline/curves.py), and
Continual World's forward transfer from them (tasks.continual, pipeline.continual_report)."""

import math
import time

import pyarrow as pa
import pytest
import torch
from pipeline_builders import fit_base_killed_once, put_datasets, tiny_task, write_stream
from test_continual_report import cw_rows, row

from library.store import SkillStore
from pipeline.continual_report import stream_metrics
from pipeline.curves import CurveTracker, curve_steps
from pipeline.driver import DriverOptions, run_plan
from pipeline.fit_job import FitOptions
from pipeline.plan import plan_stream
from pipeline.report import write_report
from tasks.continual import continual_metrics, curve_auc
from tasks.spec import dump, load_stream, parse_task

torch.set_num_threads(1)

CURVE_EVAL = {"episodes": 1, "seeds": [0], "max_steps": 10}


def test_curve_steps_start_at_zero_and_end_at_the_last_step():
    assert curve_steps(10_000, 10) == list(range(0, 10_001, 1000))
    assert curve_steps(7, 3) == [0, 2, 5, 7]
    assert curve_steps(100, 0) == []


def test_a_resumed_fit_measures_what_is_left_and_counts_what_died_with_a_worker():
    task = parse_task(tiny_task("stand", role="base", steps=60,
                                eval={**CURVE_EVAL, "curve_points": 6}))
    # Points 0 and 10 reached a checkpoint's report; 20 was in flight when the worker
    # died; the new attempt starts from the checkpoint of step 30.
    report = {"curves": {"stand": {"0": 0.1, "10": 0.2}}}
    tracker = CurveTracker(None, task, "stand", 60, 30, report)
    assert tracker.scheduled == [0, 10, 20, 30, 40, 50, 60]
    assert tracker.lost == [20]
    assert [step for step in range(61) if tracker.due(step)] == [30, 40, 50, 60]
    metrics = tracker.metrics()
    assert metrics["steps"] == [0, 10] and metrics["scores"] == [0.1, 0.2]
    assert metrics["lost"] == [20] and metrics["total_steps"] == 60
    # The points live in the unit's report, which goes into every checkpoint.
    assert tracker.points is report["curves"]["stand"]


def test_the_area_under_a_curve_is_taken_over_the_steps_it_was_measured_at():
    assert curve_auc([0.4, 0.4, 0.4]) == pytest.approx(0.4)
    assert curve_auc([0.0, 1.0]) == pytest.approx(0.5)
    # Uneven steps: 0 until step 10, then 1 until step 100.
    assert curve_auc([0.0, 1.0, 1.0], steps=[0, 10, 100]) == pytest.approx(0.95)
    # A curve whose first point was lost covers the span it has.
    assert curve_auc([1.0, 1.0], steps=[50, 100]) == pytest.approx(1.0)
    with pytest.raises(Exception, match="steps must increase"):
        curve_auc([0.0, 1.0], steps=[10, 10])


def test_forward_transfer_uses_the_curves_where_both_exist_and_says_so():
    p = [[1.0, math.nan], [1.0, 1.0]]
    reference = [0.5, 0.5]  # final successes of the scratch references
    # Task a learns faster than its reference (AUC 0.8 vs 0.6); b has no curve.
    metrics = continual_metrics(["a", "b"], p, reference, curves=([0.8, math.nan], [0.6, 0.4]))
    assert metrics.transfer_from == ["auc", "final"]
    assert metrics.task_forward_transfer[0] == pytest.approx((0.8 - 0.6) / 0.4)
    assert metrics.task_forward_transfer[1] == pytest.approx(1.0)
    # Without curves both compare final successes: a's would be 1.0, not 0.5.
    plain = continual_metrics(["a", "b"], p, reference)
    assert plain.transfer_from == ["final", "final"]
    assert plain.task_forward_transfer[0] == pytest.approx(1.0)


def test_the_report_computes_forward_transfer_from_stored_curves(tmp_path):
    rows = cw_rows() + [row(f"{t}-scratch", 0, f"{t}-scratch", f"{t}-scratch", 0.5,
                            kind="base", method="base", stream="cw-scratch")
                        for t in ("a", "b", "c")]
    curve = {"steps": [0, 50, 100], "lost": [], "episodes": 2, "total_steps": 100}
    curves = {"a": {**curve, "scores": [0.0, 1.0, 1.0]},          # AUC 0.75
              "a-scratch": {**curve, "scores": [0.0, 0.0, 1.0]},  # AUC 0.25
              "b": {**curve, "scores": [0.5, 0.5, 0.5]},
              "b-scratch": {**curve, "scores": [0.5, 0.5, 0.5]},
              "c": {**curve, "scores": [0.0, 0.0, 0.0]}}          # c-scratch: none
    _, metrics = stream_metrics(cw_rows(), rows, curves)
    assert metrics.transfer_from == ["auc", "auc", "final"]
    assert metrics.task_forward_transfer[:2] == pytest.approx([(0.75 - 0.25) / 0.75, 0.0])
    assert metrics.task_forward_transfer[2] == pytest.approx(-1.0)
    text = open(write_report(pa.Table.from_pylist(rows), str(tmp_path), "psec report",
                             curves)).read()
    assert "| a | 1.00 | 0.50 | 0.50 | 0.67 | training curves |" in text.splitlines()
    assert "| c | 0.00 | 0.00 | 0.00 | -1.00 | final successes |" in text.splitlines()
    assert "for the 1 task(s) without learning curves" in text


def test_a_skill_stores_its_curve_and_its_last_point_is_its_evaluation(ray_cluster, tmp_path):
    store_uri = str(tmp_path / "store")
    curve_eval = {**CURVE_EVAL, "curve_points": 2}
    tasks = [tiny_task("stand", role="base", steps=20),
             tiny_task("walk", base="stand", steps=40, lora={"rank": 4}, eval=curve_eval)]
    put_datasets(store_uri, tasks)
    plan = plan_stream(load_stream(write_stream(tmp_path / "s.yaml", tasks)))
    rollouts_before = curve_rollout_actors()
    run_plan(plan, store_uri, DriverOptions(progress=False, fit=FitOptions(log_every=10)))
    # The stage's three points were rolled out by one process, stopped once they were in
    # (its death reaches the state API within a moment).
    known = {actor.actor_id for actor in rollouts_before}
    deadline = time.monotonic() + 30
    while True:
        started = [a for a in curve_rollout_actors() if a.actor_id not in known]
        if [a.state for a in started] == ["DEAD"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [a.state for a in started] == ["DEAD"], started

    store = SkillStore(store_uri)
    curve = store.entry("walk").metrics["curve"]
    assert curve["steps"] == [0, 20, 40] and curve["lost"] == []
    assert curve["episodes"] == 1 and curve["total_steps"] == 40
    assert "curve" not in store.entry("stand").metrics  # its task asked for none
    # The last point rolled out the weights that were registered, on the episodes of the
    # first eval seed: exactly the item's own evaluation.
    [own] = [r for r in store.results().to_pylist()
             if r["name"] == "walk" and r["eval_task"] == "walk" and r["seed"] == 0]
    assert curve["scores"][-1] == own["score"]
    # The first point is the skill before any update: its adapters add nothing, so it acts
    # as its base does on the same episodes.
    from pipeline.evaluation import roll_episodes
    from tasks.evaluation import summarise
    from tasks.suites import get_suite

    walk = plan.units["walk"].task
    base_on_walk = roll_episodes(store, "stand", dump(walk), 0, 0, 1)
    assert curve["scores"][0] == summarise(base_on_walk, get_suite("dmc"), walk.env,
                                           walk.eval.cost_threshold)["score_mean"]


def curve_rollout_actors() -> list:
    """Every CurveRollouts actor this Ray instance has started (the live and the dead)."""
    import ray
    from ray.util.state import list_actors

    # This instance's address: the CI machine runs one Ray per test process.
    return list_actors(address=ray.get_runtime_context().gcs_address,
                       filters=[("class_name", "=", "CurveRollouts")], limit=1000,
                       raise_on_missing_output=False)


@pytest.mark.parametrize("single_worker", ["task"])
def test_a_killed_fit_keeps_the_points_its_checkpoints_hold(ray_cluster, tmp_path,
                                                            single_worker):
    store_uri = str(tmp_path / "store")
    fit_base_killed_once(store_uri, tmp_path / "s.yaml", steps=60, fail_step=35,
                         single_worker=single_worker,
                         eval={**CURVE_EVAL, "curve_points": 6})
    metrics = SkillStore(store_uri).entry("stand").metrics
    resumed_from, curve = metrics["resumed_from"], metrics["curve"]
    assert resumed_from in (10, 20, 30)
    # Every scheduled step is measured once or lost with the killed worker, and only a
    # step before the resume point can be lost.
    measured = sorted(set(curve["steps"]) | set(curve["lost"]))
    assert measured == [0, 10, 20, 30, 40, 50, 60] and len(curve["scores"]) == len(curve["steps"])
    assert all(step < resumed_from for step in curve["lost"])
    assert all(0.0 <= score <= 1.0 or math.isfinite(score) for score in curve["scores"])


def test_a_failed_rollout_costs_its_point_not_the_fit(ray_cluster):
    import ray

    @ray.remote(num_cpus=0)
    def fails():
        raise RuntimeError("env exploded")

    @ray.remote(num_cpus=0)
    def scores():
        return 0.5

    task = parse_task(tiny_task("stand", role="base", steps=20,
                                eval={**CURVE_EVAL, "curve_points": 2}))
    tracker = CurveTracker(None, task, "stand", 20, 0, {})
    tracker._pending = {0: scores.remote(), 10: fails.remote()}
    tracker.collect(wait=True)
    assert tracker.points == {"0": 0.5} and tracker.due(20)
    assert tracker.metrics()["lost"] == [10] and tracker.metrics()["steps"] == [0]
