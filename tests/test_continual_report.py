"""`psec report`'s continual section from hand-built results rows."""

import math

import pyarrow as pa
import pytest

from pipeline.continual_report import (
    continual_tasks,
    curve_lines,
    metric_lines,
    stream_metrics,
    success_matrix,
)
from pipeline.report import write_report
from pipeline.results import ResultRow, now


def row(after, position, name, eval_task, score, seed=0, kind="skill", method="skill",
        stream="cw", success=None):
    return ResultRow(stream=stream, task=after, position=position, name=name, kind=kind,
                     method=method, composer=None, skills=[name], seed=seed,
                     eval_task=eval_task, episodes=2, return_mean=score, return_std=0.0,
                     score=score, success=score if success is None else success, cost=0.0, steps=5, wall_s=1.0,
                     scale="smoke", time=now()).model_dump(mode="json")


def cw_rows():
    """A base, then skills a, b, c; a drops from 1.0 to 0.5 after c, b stays at 0.5
    (seeds 0.25 and 0.75), c ends at 0.0; a composer row that is not a matrix entry."""
    return [
        row("base", 0, "base", "base", 0.3, kind="base", method="base"),
        row("a", 1, "a", "a", 1.0), row("a", 1, "base", "base", 0.3, kind="base",
                                         method="base"),
        row("b", 2, "b", "b", 0.25), row("b", 2, "b", "b", 0.75, seed=1),
        row("b", 2, "a", "a", 1.0), row("b", 2, "b-psec", "b", 0.9, kind="composer",
                                        method="psec"),
        row("c", 3, "c", "c", 0.0), row("c", 3, "a", "a", 0.5), row("c", 3, "b", "b", 0.5),
        row("c", 3, "b", "b", 0.5, seed=1),
    ]


def test_the_success_matrix_leaves_bases_out_and_averages_seeds():
    rows = cw_rows()
    assert continual_tasks(rows) == ["a", "b", "c"]
    p = success_matrix(rows, ["a", "b", "c"])
    assert p[0, 0] == 1.0 and p[1, 1] == 0.5 and p[2, 0] == 0.5
    assert math.isnan(p[0, 1]) and math.isnan(p[1, 2])


def test_a_stream_without_re_evaluations_is_not_continual():
    rows = [row("a", 0, "a", "a", 1.0), row("b", 1, "b", "b", 1.0)]
    assert continual_tasks(rows) == [] and stream_metrics(rows, rows) is None


def test_metrics_take_the_scratch_base_of_any_stream_as_the_reference():
    rows = cw_rows()
    _, metrics = stream_metrics(rows, rows)
    assert metrics.average_success == pytest.approx(1.0 / 3)
    assert metrics.forgetting == pytest.approx(0.5 / 3)
    assert math.isnan(metrics.forward_transfer)
    scratch = [row("a-scratch", 0, "a-scratch", "a-scratch", 0.5, kind="base",
                   method="base", stream="cw-scratch"),
               # Not a reference: a skill of that name, or a base on another task.
               row("a-scratch", 1, "a-scratch", "a-scratch", 0.0, stream="other"),
               row("x", 0, "a-scratch", "x", 0.0, kind="base", method="base")]
    _, metrics = stream_metrics(rows, rows + scratch)
    assert metrics.task_forward_transfer[0] == pytest.approx(1.0)
    assert metrics.forward_transfer == pytest.approx(1.0)
    # Only a has its reference: the headline says the figure covers 1 of the 3 tasks.
    assert metric_lines(metrics)[2] == ("forward transfer 1.00 (1 of 3 tasks with a scratch "
                                        "reference)")


def test_report_writes_the_three_lines_and_the_heat_map(tmp_path):
    path = write_report(pa.Table.from_pylist(cw_rows()), str(tmp_path), "psec report")
    lines = open(path).read().splitlines()
    assert "### Continual metrics of `cw`" in lines
    assert {"average success 0.33", "forgetting 0.17", "forward transfer —"} <= set(lines)
    assert "| a | 1.00 | 0.50 | 0.50 | — | — |" in lines
    assert (tmp_path / "cw-success.png").stat().st_size > 1000


def test_a_report_on_a_stream_still_running_says_which_cells_it_lacks(tmp_path):
    # Task a not yet re-evaluated after c: no average success, no forgetting, and why.
    rows = [r for r in cw_rows() if not (r["task"] == "c" and r["eval_task"] == "a")]
    lines = open(write_report(pa.Table.from_pylist(rows), str(tmp_path), "psec report")
                 ).read().splitlines()
    assert {"average success —", "forgetting —"} <= set(lines)
    assert any(line.startswith("**Partial:** p_i(t) holds 5 of the 6 cells")
               and "(missing: a after c)" in line for line in lines)
    full = open(write_report(pa.Table.from_pylist(cw_rows()), str(tmp_path), "psec report")
                ).read()
    assert "Partial" not in full


def test_a_stream_scored_by_return_reports_an_average_score_not_a_success(tmp_path):
    # DMC: the score is the return and no episode reports success.
    rows = [{**r, "score": 600 * r["score"], "return_mean": 600 * r["score"], "success": 0.0}
            for r in cw_rows()]
    lines = open(write_report(pa.Table.from_pylist(rows), str(tmp_path), "psec report")).read()
    assert "average score 200.00" in lines.splitlines()
    assert "average success" not in lines


def test_a_cw10_stream_puts_the_paper_s_per_task_figures_beside_its_own(tmp_path):
    envs = {"a": "hammer-v3", "b": "push-wall-v3", "c": "window-close-v3", "base": "reach-v3"}
    rows = [{**r, "env": envs[r["eval_task"]]} for r in cw_rows()]
    lines = open(write_report(pa.Table.from_pylist(rows), str(tmp_path),
                              "psec report")).read().splitlines()
    assert "| a | 1.00 | 0.50 | 0.50 | — | — | 0.91 |" in lines
    assert "| c | 0.00 | 0.00 | 0.00 | — | — | 0.88 |" in lines
    assert any("average success 0.87, forgetting 0" in line for line in lines)
    # Streams of other tasks get no such column.
    other = open(write_report(pa.Table.from_pylist(cw_rows()), str(tmp_path / "x"),
                              "psec report")).read()
    assert "paper PSEC" not in other


def test_learning_curves_are_tabled_per_item_and_step_with_lost_points_marked():
    curves = {"a": {"steps": [0, 50, 100], "scores": [0.0, 0.5, 1.0]},
              "a-scratch": {"steps": [50, 100], "scores": [0.25, 0.75]},  # step 0 lost
              "b": {"steps": [], "scores": []}}
    lines = curve_lines(curves, ["a", "b", "c"])
    assert "| item | 0 | 50 | 100 |" in lines
    assert "| a | 0.00 | 0.50 | 1.00 |" in lines and "| a-scratch | — | 0.25 | 0.75 |" in lines
    assert not any(line.startswith(("| b ", "| c ")) for line in lines)
    assert curve_lines({"b": {"steps": [], "scores": []}}, ["a", "b"]) == []

