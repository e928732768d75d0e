"""The unseen-task table (pipeline.unseen_report) and the shipped Meta-World unseen-task
stream: settings come from the stream's composer tasks, cells from result rows."""

import re
from pathlib import Path

import metaworld
import pytest
from metaworld.policies import ENV_POLICY_MAP

from library.store import SkillStore
from pipeline.results import ResultRow, now
from pipeline.unseen_report import (
    PAPER_PRETRAINING,
    PAPER_PRETRAINING_MEAN,
    PAPER_UNSEEN,
    Column,
    collect,
    main,
    paper_task,
    versus,
)
from tasks.spec import load_stream

CONFIG = Path(__file__).parent.parent / "configs" / "metaworld_unseen.yaml"
PAPER_MD = Path(__file__).parent.parent.parent / "shared" / "PAPER.md"

# Appendix F.2's lists (../shared/PAPER.md, "Unseen-task setting"), in the paper's order.
PRETRAINING = ["peg-insert-side", "peg-unplug-side", "button-press-topdown", "push-back",
               "window-close", "door-open", "handle-press", "plate-slide-side",
               "handle-pull-side", "window-open", "door-close", "reach", "push", "stick-push",
               "drawer-close", "plate-slide-back", "coffee-button", "hand-insert"]
UNSEEN = ["plate-slide", "handle-press-side", "button-press-wall", "button-press-topdown-wall",
          "push-wall", "reach-wall", "faucet-close", "button-press", "plate-slide-back-side",
          "handle-pull", "faucet-open", "stick-pull"]


def row(name, task, method, score, seed=0, env=None, kind="composer"):
    return ResultRow(stream="metaworld_unseen", task=task, position=0, name=name,
                     kind=kind, method=method, composer=name if kind == "composer" else None,
                     skills=[], seed=seed,
                     eval_task=task, env=env, episodes=2, return_mean=0.0, return_std=0.0,
                     score=score, success=score, cost=0.0, steps=50, wall_s=1.0,
                     scale="smoke", time=now()).model_dump(mode="json")


def settings(stream):
    """(base, skill tasks, few-shot composer tasks, the zero-shot composer task)."""
    skills = [t for t in stream.tasks if t.role == "skill"]
    few_shot = [t for t in stream.tasks if t.role == "composer" and not t.eval.envs]
    (zero_shot,) = [t for t in stream.tasks if t.role == "composer" and t.eval.envs]
    return stream.tasks[0], skills, few_shot, zero_shot


def test_the_stream_s_18_pretraining_and_12_unseen_tasks_are_the_paper_s():
    base, skills, few_shot, zero_shot = settings(load_stream(CONFIG))
    pretraining = {paper_task(t.env) for t in skills}
    unseen = {paper_task(t.env) for t in few_shot}
    assert len(skills) == 18 and pretraining == set(PRETRAINING)
    assert len(few_shot) == 12 and unseen == set(UNSEEN)
    assert not pretraining & unseen
    # The paper's figures (pipeline.unseen_report) cover exactly these tasks.
    assert set(PAPER_PRETRAINING) == pretraining
    assert set(PAPER_UNSEEN["few-shot"]) == set(PAPER_UNSEEN["zero-shot"]) == unseen
    # Every env is a Meta-World v3 task with a scripted expert (the data generator's).
    for env in base.data.envs + zero_shot.eval.envs:
        assert env in metaworld.ALL_V3_ENVIRONMENTS and env in ENV_POLICY_MAP, env
        assert env.endswith("-v3")


@pytest.mark.skipif(not PAPER_MD.exists(), reason="no ../shared/PAPER.md beside the checkout")
def test_the_paper_s_figures_are_paper_md_s():
    text = " ".join(PAPER_MD.read_text().split())
    part = text[text.index("Unseen-task setting."):]
    tables = [part[part.index("(Table 5"):part.index("The 12 unseen tasks")],
              part[part.index("(Table 6"):part.index("Zero-shot (Table 7")],
              part[part.index("(Table 7"):]]
    pattern = re.compile(r"([a-z]+(?:-[a-z]+)*) (\d\.\d\d(?:/\d\.\d\d)+)")
    table5, table6, table7 = ({name: tuple(map(float, figures.split("/")))
                               for name, figures in pattern.findall(t)} for t in tables)
    assert table5.pop("mean") == PAPER_PRETRAINING_MEAN
    assert list(table5) == PRETRAINING and table5 == PAPER_PRETRAINING
    for table, setting in ((table6, "few-shot"), (table7, "zero-shot")):
        assert list(table) == UNSEEN
        assert table == {name: (m["asec"], m["nsec"], m["psec"])
                         for name, m in PAPER_UNSEEN[setting].items()}


def test_the_stream_s_settings_and_budgets():
    stream = load_stream(CONFIG, "paper")
    base, skills, few_shot, zero_shot = settings(stream)
    assert [t.env for t in skills] == base.data.envs
    assert [t.env for t in few_shot] == zero_shot.eval.envs
    assert zero_shot.data.dataset == base.name  # the union of the 18 tasks' data
    # PSEC, NSEC, ASEC and the random-LoRA bank in both settings; uniform α once.
    for task in few_shot:
        assert [(c.mode, c.bank) for c in task.composers] == [
            ("parameter", "stored"), ("noise", "stored"), ("action", "stored"),
            ("parameter", "random")]
        # The best single stored item is a control of every few-shot task.
        assert task.control_items() == [base.name, *base.data.envs]
    assert [(c.mode, c.bank) for c in zero_shot.composers] == [
        ("parameter", "stored"), ("noise", "stored"), ("action", "stored"),
        ("parameter", "random"), ("fixed", "stored")]
    # ASEC samples its skills' actions once per training state (docs/DEVIATIONS.md).
    assert {c.action_draws for t in few_shot for c in t.composers if c.mode == "action"} == {16}
    assert [c.action_draws for c in zero_shot.composers if c.mode == "action"] == [1]
    uniform = zero_shot.composers[-1]
    assert (uniform.steps, uniform.alpha.init) == (0, "uniform")
    for task in [zero_shot, *few_shot]:
        assert all(c.skills == ["base", *base.data.envs] for c in task.composers)
        # No new skill to start from: α starts uniform, unregularised.
        assert {(c.alpha.init, c.alpha.reg) for c in task.composers} == {("uniform", 0.0)}
    assert {c.steps for t in few_shot for c in t.composers} == {1000}
    assert {c.data.fraction for t in few_shot for c in t.composers} == {0.1}
    assert {c.steps for c in zero_shot.composers} == {2000, 0}
    # Zero-shot: 4 seeds x 10 episodes (appendix F.2); the other tasks 3 seeds x 10.
    assert (zero_shot.eval.seeds, zero_shot.eval.episodes) == ([0, 1, 2, 3], 10)
    assert {len(t.eval.seeds) for t in [base, *skills, *few_shot]} == {3}
    smoke = load_stream(CONFIG, "smoke")
    assert sum(t.role == "skill" for t in smoke.tasks) == 3
    assert smoke.task("zero-shot").eval_envs == [t.env for t in smoke.tasks[-2:]]


def test_the_table_has_an_unseen_env_per_row_and_a_setting_and_method_per_column():
    stream = load_stream(CONFIG, "smoke")
    rows = [row("plate-slide-psec", "plate-slide-v3", "psec", 1.0, seed=0),
            row("plate-slide-psec", "plate-slide-v3", "psec", 0.0, seed=1),
            row("plate-slide-asec", "plate-slide-v3", "asec", 0.5),
            row("zero-shot-psec", "zero-shot", "psec", 0.25, env="handle-press-side-v3"),
            row("zero-shot-psec", "zero-shot", "psec", 0.75, env="plate-slide-v3"),
            # Another stream's row and a skill's row are not part of the table.
            {**row("plate-slide-psec", "plate-slide-v3", "psec", 0.9), "stream": "other"},
            row("handle-press-v3", "handle-press-v3", "skill", 1.0, kind="skill")]
    table = collect(stream, rows)
    assert table.envs == ["plate-slide-v3", "handle-press-side-v3"]
    assert table.columns == [Column("few-shot", "psec"), Column("few-shot", "asec"),
                             Column("zero-shot", "psec")]
    assert table.cell("plate-slide-v3", Column("few-shot", "psec")) == "0.50 ± 0.50 (n=2)"
    assert table.cell("handle-press-side-v3", Column("few-shot", "psec")) == "—"
    few = table.markdown("few-shot")
    assert few.startswith("| unseen task | PSEC | ASEC |\n")
    # Beside each cell the paper's figure (Table 6 few-shot, Table 7 zero-shot); in the
    # mean row, the mean of the paper's figures over the same envs.
    assert "| handle-press-side-v3 | —; paper 0.92 | —; paper 0.73 |" in few
    assert few.endswith("| mean over envs | 0.50 over 1; paper 0.89 | 0.50 over 1; paper 0.14 |")
    zero = table.markdown("zero-shot")
    assert "| handle-press-side-v3 | 0.25 ± 0.00 (n=1); paper 0.62 |" in zero
    assert zero.endswith("| mean over envs | 0.50 over 2; paper 0.39 |")


def test_the_controls_stand_beside_the_composers_in_both_tables():
    stream = load_stream(CONFIG, "smoke")
    rows = [row("plate-slide-psec", "plate-slide-v3", "psec", 0.5),
            row("plate-slide-random", "plate-slide-v3", "random", 0.1),
            row("zero-shot-psec", "zero-shot", "psec", 0.2, env="plate-slide-v3"),
            row("zero-shot-uniform", "zero-shot", "fixed", 0.3, env="plate-slide-v3"),
            # Items alone on a few-shot task (`controls: [single]`), two seeds each.
            row("mw18-base", "plate-slide-v3", "base", 0.0, kind="base"),
            row("plate-slide-side-v3", "plate-slide-v3", "skill", 0.6, kind="skill"),
            row("plate-slide-side-v3", "plate-slide-v3", "skill", 1.0, seed=1, kind="skill"),
            row("handle-press-v3", "plate-slide-v3", "skill", 0.7, kind="skill"),
            row("handle-press-v3", "plate-slide-v3", "skill", 0.7, seed=1, kind="skill")]
    table = collect(stream, rows)
    # The untrained uniform-α composer is the `uniform` control, not a fixed-α method.
    assert Column("zero-shot", "uniform") in table.columns
    # In stream order (the base first), whatever order the rows came in.
    assert list(table.controls["plate-slide-v3"].items()) == [
        ("mw18-base", [0.0]), ("handle-press-v3", [0.7, 0.7]),
        ("plate-slide-side-v3", [0.6, 1.0])]
    assert table.best_single("plate-slide-v3") == ("plate-slide-side-v3", [0.6, 1.0])
    assert table.best_single("handle-press-side-v3") is None
    few = table.markdown("few-shot")
    assert few.startswith("| unseen task | PSEC | random-LoRA bank | uniform α | "
                          "best single item alone |\n")
    # uniform α has no figure of the paper's; the best single item is named.
    assert ("| plate-slide-v3 | 0.50 ± 0.00 (n=1); paper 0.89 | 0.10 ± 0.00 (n=1) | "
            "0.30 ± 0.00 (n=1) | 0.80 ± 0.20 (n=2) plate-slide-side-v3 |") in few
    assert few.endswith("| 0.80 over 1 |")
    # Items level with the best are counted, not hidden behind its name.
    table.controls["plate-slide-v3"]["handle-press-v3"] = [0.8]
    # Of tied items the first in stream order is named.
    assert table.best_single_cell("plate-slide-v3") == \
        "0.80 ± 0.00 (n=1) handle-press-v3 (+1 tied)"
    table.controls["plate-slide-v3"]["mw18-base"] = [0.8]
    assert table.best_single_cell("plate-slide-v3") == "0.80 ± 0.00 (n=1) mw18-base (+2 tied)"
    zero = table.markdown("zero-shot")
    assert zero.startswith("| unseen task | PSEC | uniform α | best single item alone |")
    # The skill's own pretraining-task score is not mixed into the controls.
    assert table.skills["handle-press-v3"] == []


def test_versus_counts_a_gap_only_where_the_seeds_resolve_it():
    # 0.9 ± 0.05 against 0.5 ± 0.05 over 4 seeds: far outside the noise, either way round.
    high, low = [0.85, 0.9, 0.95, 0.9], [0.45, 0.5, 0.55, 0.5]
    assert versus(high, low) == 1 and versus(low, high) == -1
    # A 0.1 gap between seeds spread by ±0.3 is level.
    assert versus([0.2, 0.8, 0.5, 0.9], [0.1, 0.7, 0.4, 0.8]) == 0
    # No spread on either side: any difference counts; equal scores are level.
    assert versus([1.0, 1.0, 1.0], [0.97, 0.97, 0.97]) == 1
    assert versus([1.0, 1.0], [1.0, 1.0, 1.0]) == 0
    # One seed against a spread: nothing to weigh the spread against.
    assert versus([0.9], [0.1, 0.3]) == 0
    assert versus([0.9], [0.1]) == 0


def test_the_psec_line_counts_each_column_and_the_best_single_item():
    stream = load_stream(CONFIG, "smoke")
    rows = []
    for seed, (psec, nsec, bank) in enumerate([(0.9, 0.2, 0.9), (0.8, 0.1, 1.0),
                                               (1.0, 0.3, 0.8)]):
        rows += [row("plate-slide-psec", "plate-slide-v3", "psec", psec, seed=seed),
                 row("plate-slide-nsec", "plate-slide-v3", "nsec", nsec, seed=seed),
                 row("plate-slide-random", "plate-slide-v3", "random", bank, seed=seed),
                 row("mw18-base", "plate-slide-v3", "base", 1.0, seed=seed, kind="base")]
    table = collect(stream, rows)
    line = table.psec_versus("few-shot")
    assert "NSEC: above on 1, level on 0, below on 0 of 1" in line
    assert "random-LoRA bank: above on 0, level on 1, below on 0 of 1" in line
    # The base alone scores 1.0 on every seed: PSEC's 0.9 ± 0.1 is not clearly under it.
    assert "the best single item: above on 0, level on 1, below on 0 of 1" in line
    # ASEC has no scores here, so it has no count; a setting without PSEC has no line.
    assert "ASEC" not in line
    assert table.psec_versus("zero-shot") == ""


def test_the_pretraining_table_puts_each_task_s_skill_beside_table_5():
    stream = load_stream(CONFIG, "smoke")
    rows = [row("handle-press-v3", "handle-press-v3", "skill", 1.0, seed=0, kind="skill"),
            row("handle-press-v3", "handle-press-v3", "skill", 0.5, seed=1, kind="skill"),
            # The skill in another task's env is not its pretraining-task score.
            {**row("handle-press-v3", "handle-press-v3", "skill", 0.0, kind="skill"),
             "eval_task": "plate-slide-side-v3"}]
    table = collect(stream, rows)
    assert list(table.skills) == ["handle-press-v3", "plate-slide-side-v3",
                                  "plate-slide-back-v3"]
    text = table.pretraining_markdown()
    assert "| handle-press-v3 | 0.75 ± 0.25 (n=2) | — | 0.67 | 0.96 | 0.97 | 0.97 |" in text
    assert "| plate-slide-side-v3 | — | — | 0.27 | 0.23 | 0.53 | 0.74 |" in text
    assert text.endswith("| mean | 0.75 over 1 | — | 0.62 | 0.78 | 0.81 | 0.90 |")


def test_the_pretraining_table_takes_each_scratch_reference_from_any_stream():
    stream = load_stream(CONFIG, "smoke")
    scratch = {**row("handle-press-v3-scratch", "handle-press-v3-scratch", "base", 0.4,
                     kind="base"), "stream": "metaworld_unseen-scratch"}
    table = collect(stream, [scratch, {**scratch, "seed": 1, "score": 0.6}])
    assert table.scratch == {"handle-press-v3": [0.4, 0.6]}
    text = table.pretraining_markdown()
    assert "| handle-press-v3 | — | 0.50 ± 0.10 (n=2) | 0.67 | 0.96 | 0.97 | 0.97 |" in text
    assert text.endswith("| mean | — | 0.50 over 1 | 0.62 | 0.78 | 0.81 | 0.90 |")


def test_the_command_rewrites_only_its_section(tmp_path, capsys):
    store = SkillStore(str(tmp_path / "store"))
    store.append_results([row("zero-shot-nsec", "zero-shot", "nsec", 1.0,
                              env="plate-slide-v3")])
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n<!-- unseen:metaworld_unseen -->\nold\n"
                       "<!-- /unseen:metaworld_unseen -->\n\n## after\n")
    assert main([str(CONFIG), "--store", store.uri, "--results", str(results)]) == 0
    text = results.read_text()
    assert "old" not in text and text.startswith("# R\n") and text.endswith("## after\n")
    assert "| plate-slide-v3 | 1.00 ± 0.00 (n=1); paper 0.00 |" in text
    assert "| handle-press-v3 | — | — | 0.67 | 0.96 | 0.97 | 0.97 |" in text  # Table 5
    assert f"--store {store.uri} --results {results}" in text
    assert main([str(CONFIG), "--scale", "huge", "--store", store.uri]) == 2
    assert capsys.readouterr().err.startswith("psec: error: scale: unknown scale 'huge'")


def test_psec_report_keeps_a_cell_per_env_and_names_the_env():
    from pipeline.report import latest_cells

    rows = [row("zero-shot-psec", "zero-shot", "psec", 1.0, env="reach-wall-v3"),
            row("zero-shot-psec", "zero-shot", "psec", 0.0, env="button-press-wall-v3"),
            row("reach-wall-psec", "reach-wall-v3", "psec", 0.5, env="reach-wall-v3")]
    cells = latest_cells(rows)
    assert [(c.where, c.score[0]) for c in cells] == [
        ("reach-wall-v3", 0.5), ("zero-shot [button-press-wall-v3]", 0.0),
        ("zero-shot [reach-wall-v3]", 1.0)]
