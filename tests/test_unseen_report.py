"""The unseen-task table (pipeline.unseen_report) and the shipped Meta-World unseen-task
stream: settings come from the stream's composer tasks, cells from result rows."""

from pathlib import Path

from library.store import SkillStore
from pipeline.results import ResultRow, now
from pipeline.unseen_report import Column, collect, main
from tasks.spec import load_stream
from tasks.suites.metaworld import CW10

CONFIG = Path(__file__).parent.parent / "configs" / "metaworld_unseen.yaml"


def row(name, task, method, score, seed=0, env=None):
    return ResultRow(stream="metaworld_unseen", task=task, position=0, name=name,
                     kind="composer", method=method, composer=name, skills=[], seed=seed,
                     eval_task=task, env=env, episodes=2, return_mean=0.0, return_std=0.0,
                     score=score, success=score, cost=0.0, steps=50, wall_s=1.0,
                     scale="smoke", time=now()).model_dump(mode="json")


def test_the_stream_has_18_pretraining_and_12_unseen_tasks_outside_cw10():
    stream = load_stream(CONFIG, "paper")
    base = stream.tasks[0]
    skills = [t for t in stream.tasks if t.role == "skill"]
    few_shot = [t for t in stream.tasks if t.role == "composer" and not t.eval.envs]
    (zero_shot,) = [t for t in stream.tasks if t.role == "composer" and t.eval.envs]
    assert [t.env for t in skills] == base.data.envs and len(skills) == 18
    assert [t.env for t in few_shot] == zero_shot.eval.envs and len(few_shot) == 12
    assert not {t.env for t in skills + few_shot} & set(CW10)
    assert zero_shot.data.dataset == base.name  # the union of the 18 tasks' data
    for task in [zero_shot, *few_shot]:
        assert [c.mode for c in task.composers] == ["parameter", "noise", "action"]
        assert all(c.skills == ["base", *base.data.envs] for c in task.composers)
    assert {c.steps for t in few_shot for c in t.composers} == {1000}
    assert {c.data.fraction for t in few_shot for c in t.composers} == {0.1}
    smoke = load_stream(CONFIG, "smoke")
    assert sum(t.role == "skill" for t in smoke.tasks) == 3
    assert smoke.task("zero-shot").eval_envs == [t.env for t in smoke.tasks[-2:]]


def test_the_table_has_an_unseen_env_per_row_and_a_setting_and_method_per_column():
    stream = load_stream(CONFIG, "smoke")
    rows = [row("reach-wall-psec", "reach-wall-v3", "psec", 1.0, seed=0),
            row("reach-wall-psec", "reach-wall-v3", "psec", 0.0, seed=1),
            row("reach-wall-asec", "reach-wall-v3", "asec", 0.5),
            row("zero-shot-psec", "zero-shot", "psec", 0.25, env="button-press-wall-v3"),
            row("zero-shot-psec", "zero-shot", "psec", 0.75, env="reach-wall-v3"),
            # Another stream's row and a skill's row are not part of the table.
            {**row("reach-wall-psec", "reach-wall-v3", "psec", 0.9), "stream": "other"},
            {**row("reach-v3", "reach-v3", "skill", 1.0), "composer": None}]
    table = collect(stream, rows)
    assert table.envs == ["reach-wall-v3", "button-press-wall-v3"]
    assert [c.label for c in table.columns] == ["few-shot PSEC", "few-shot ASEC",
                                                "zero-shot PSEC"]
    assert table.cell("reach-wall-v3", Column("few-shot", "psec")) == "0.50 ± 0.50 (n=2)"
    assert table.cell("button-press-wall-v3", Column("few-shot", "psec")) == "—"
    text = table.markdown()
    assert "| button-press-wall-v3 | — | — | 0.25 ± 0.00 (n=1) |" in text
    assert text.endswith("| mean over envs | 0.50 over 1 | 0.50 over 1 | 0.50 over 2 |")


def test_the_command_rewrites_only_its_section(tmp_path, capsys):
    store = SkillStore(str(tmp_path / "store"))
    store.append_results([row("zero-shot-nsec", "zero-shot", "nsec", 1.0,
                              env="reach-wall-v3")])
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n<!-- unseen:metaworld_unseen -->\nold\n"
                       "<!-- /unseen:metaworld_unseen -->\n\n## after\n")
    assert main([str(CONFIG), "--store", store.uri, "--results", str(results)]) == 0
    text = results.read_text()
    assert "old" not in text and text.startswith("# R\n") and text.endswith("## after\n")
    assert "| reach-wall-v3 | 1.00 ± 0.00 (n=1) |" in text
    assert f"--store {store.uri} --results {results}" in text
    assert main([str(CONFIG), "--scale", "huge", "--store", store.uri]) == 2
    assert capsys.readouterr().err.startswith("psec: error: scale: unknown scale 'huge'")



def test_psec_report_keeps_a_cell_per_env_and_names_the_env():
    from pipeline.report import latest_cells

    rows = [row("zero-shot-psec", "zero-shot", "psec", 1.0, env="reach-wall-v3"),
            row("zero-shot-psec", "zero-shot", "psec", 0.0, env="door-close-v3"),
            row("reach-wall-psec", "reach-wall-v3", "psec", 0.5, env="reach-wall-v3")]
    cells = latest_cells(rows)
    assert [(c.where, c.score[0]) for c in cells] == [
        ("reach-wall-v3", 0.5), ("zero-shot [door-close-v3]", 0.0),
        ("zero-shot [reach-wall-v3]", 1.0)]
