"""`psec report` over several stores: a continual stream's metrics across runs (seeds)."""

import math

import pytest
import torch
from test_continual_report import row

from library.errors import PsecError, StoreError
from library.store import SkillStore
from pipeline.cli import main
from pipeline.continual_seeds import mean_ci, stream_runs, write_runs_report


def test_the_interval_is_student_s_t_over_the_finite_values():
    mean, half, n = mean_ci([0.5, 0.7, 0.9])
    # t(0.975, 2 degrees of freedom) = 4.3027; sample std 0.2.
    assert (mean, n) == (pytest.approx(0.7), 3)
    assert half == pytest.approx(4.302653 * 0.2 / math.sqrt(3), rel=1e-5)
    assert mean_ci([0.5, math.nan, 0.9])[2] == 2
    assert math.isnan(mean_ci([0.4])[1]) and math.isnan(mean_ci([])[0])


def run_store(path, seed, scores, skip=()):
    """One seed's run of stream `cw`: a base, then skills a, b, c, ... scoring `scores`
    (as many tasks as scores: fewer is a run still going), each re-evaluated after every
    later task with the same score (frozen skills), except the (task, evaluated task) pairs
    in `skip`; items record the seed as fits do."""
    store = SkillStore(str(path))
    tasks = "abcdef"[: len(scores)]
    store.register("mw", "base", {"kind": "base"}, {"w": torch.zeros(1)},
                   metrics={"stream_seed": seed})
    rows = [row("mw", 0, "mw", "mw", 0.1, kind="base", method="base")]
    for t, task in enumerate(tasks):
        store.register(task, "skill", {"kind": "skill"}, {"w": torch.zeros(1)},
                       parent="mw", metrics={"stream_seed": seed})
        rows += [row(task, t + 1, tasks[i], tasks[i], scores[i]) for i in range(t + 1)
                 if (task, tasks[i]) not in skip]
    store.append_results(rows)
    return store


def test_runs_of_a_stream_are_reported_with_their_mean_and_interval(tmp_path):
    stores = [run_store(tmp_path / f"s{seed}", seed, scores)
              for seed, scores in enumerate([(1.0, 0.2), (0.6, 0.4), (0.8, 0.9)])]
    (cw,) = stream_runs(stores).values()
    assert [run.seed for run in cw] == [0, 1, 2]
    assert [run.metrics.average_success for run in cw] == pytest.approx([0.6, 0.5, 0.85])

    out = tmp_path / "report"
    code = main(["report", *(part for store in stores for part in ("--store", store.uri)),
                 "--out", str(out)])
    assert code == 0
    text = (out / "results.md").read_text()
    mean, half, _ = mean_ci([0.6, 0.5, 0.85])
    assert f"| **mean ± 95% CI** | | **{mean:.2f} ± {half:.2f}** | **0.00 ± 0.00** | **—** |" \
        in text.splitlines()
    a_mean, a_half, _ = mean_ci([1.0, 0.6, 0.8])
    b_mean, b_half, _ = mean_ci([0.2, 0.4, 0.9])
    assert (f"| a | {a_mean:.2f} ± {a_half:.2f} | {a_mean:.2f} ± {a_half:.2f} | "
            "0.00 ± 0.00 | — |") in text
    assert f"| b | {b_mean:.2f} ± {b_half:.2f} | {b_mean:.2f} ± {b_half:.2f} |" in text
    assert f"psec report --store {stores[0].uri}" in text
    assert (out / "cw-success-runs.png").stat().st_size > 0


def test_a_run_short_of_the_last_task_is_listed_and_left_out(tmp_path):
    stores = [run_store(tmp_path / "s0", 0, (1.0, 0.2, 0.5)),
              run_store(tmp_path / "s1", 1, (0.6, 0.4, 0.7)),
              run_store(tmp_path / "s2", 2, (0.0, 0.0))]
    text = open(write_runs_report(stores, str(tmp_path / "out"), "psec report")).read()
    assert "over 2 run(s)" in text
    assert f"Left out, unfinished: {stores[2].uri} (2 of 3 tasks)." in text
    mean, half, _ = mean_ci([(1.0 + 0.2 + 0.5) / 3, (0.6 + 0.4 + 0.7) / 3])
    assert f"**{mean:.2f} ± {half:.2f}**" in text


def test_a_run_with_a_cell_missing_is_named_and_left_out_of_the_means(tmp_path):
    # Seed 2's task a not re-evaluated after task c (yet).
    scores = [(1.0, 0.2, 0.3), (0.6, 0.4, 0.5), (0.8, 0.9, 1.0)]
    stores = [run_store(tmp_path / f"s{seed}", seed, scores[seed],
                        skip={("c", "a")} if seed == 2 else ()) for seed in range(3)]
    text = open(write_runs_report(stores, str(tmp_path / "out"), "psec report")).read()
    assert f"Partial: {stores[2].uri} lacks 1 cell(s) of p_i(t)" in text
    assert f"| {stores[2].uri} | 2 | — | — | — |" in text
    mean, half, _ = mean_ci([0.5, 0.5])
    assert f"**{mean:.2f} ± {half:.2f} (n=2)**" in text


def test_a_run_with_scratch_references_for_part_of_the_stream_says_so(tmp_path):
    # Seed 2's scratch references still fitting: b's is missing, so its forward transfer
    # (a's alone) is marked and left out of the mean; the per-task figures keep it.
    stores = [run_store(tmp_path / f"s{seed}", seed, (0.8, 0.6)) for seed in range(3)]
    for seed, store in enumerate(stores):
        store.append_results([
            row(f"{task}-scratch", 0, f"{task}-scratch", f"{task}-scratch", 0.5,
                kind="base", method="base", stream="cw-scratch")
            for task in ("a", "b")[: 1 if seed == 2 else 2]])
    text = open(write_runs_report(stores, str(tmp_path / "out"), "psec report")).read()
    # FT: a (0.8 - 0.5) / 0.5 = 0.6, b (0.6 - 0.5) / 0.5 = 0.2; mean 0.4.
    assert f"| {stores[0].uri} | 0 | 0.70 | 0.00 | 0.40 |" in text
    assert (f"| {stores[2].uri} | 2 | 0.70 | 0.00 | 0.60 (1 of 2 tasks with a scratch "
            "reference) |") in text
    assert text.count("| **0.40 ± 0.00 (n=2)** |") == 1
    assert f"Partial: {stores[2].uri} has a scratch reference for 1 of 2 tasks" in text
    assert "| a | 0.80 ± 0.00 | 0.80 ± 0.00 | 0.00 ± 0.00 | 0.60 ± 0.00 |" in text
    assert "| b | 0.60 ± 0.00 | 0.60 ± 0.00 | 0.00 ± 0.00 | 0.20 ± 0.00 (n=2) |" in text


def test_a_store_below_the_working_directory_is_named_relative_to_it(tmp_path, monkeypatch):
    stores = [run_store(tmp_path / "stores" / f"seed-{seed}", seed, (1.0, 0.5))
              for seed in range(2)]
    # Seed 1 has one of its two scratch references: its "Partial:" line names it too.
    stores[1].append_results([row("a-scratch", 0, "a-scratch", "a-scratch", 0.5, kind="base",
                                  method="base", stream="cw-scratch")])
    monkeypatch.chdir(tmp_path)  # as a committed store is named from the repository's root
    text = open(write_runs_report(stores, str(tmp_path / "out"), "psec report")).read()
    assert "| stores/seed-0 | 0 |" in text and "| stores/seed-1 | 1 |" in text
    assert "Partial: stores/seed-1 has a scratch reference for 1 of 2 tasks" in text
    assert str(tmp_path) not in text.split("Heat map")[0].split("| run (store)")[1]


def test_one_seed_twice_and_one_store_twice_are_refused(tmp_path, capsys):
    first = run_store(tmp_path / "s0", 0, (1.0, 0.2))
    again = run_store(tmp_path / "s0-again", 0, (0.5, 0.5))
    with pytest.raises(StoreError, match="both hold seed 0 of stream 'cw'"):
        stream_runs([first, again])
    out = str(tmp_path / "out")
    for argv in (["--store", first.uri, "--store", first.uri, "--out", out],
                 ["--store", first.uri, "--store", again.uri]):
        assert main(["report", *argv]) == 2
        assert "psec: error: --" in capsys.readouterr().err
    with pytest.raises(PsecError, match="none of the stores"):
        write_runs_report([SkillStore(str(tmp_path / "empty"))], out, "psec report")
