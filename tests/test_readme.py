"""The README's Python example runs exactly as written and does what it says."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands():
    lines = [ln for ln in README.read_text().splitlines() if ln.strip()]
    commands = lines[2:4]  # after the title and the code fence
    assert "psec run configs/dmc_walker.yaml --scale main" in commands[0]
    assert "pytest" in commands[1]
    # CI runs the README's test command as written.
    test_command = commands[1].split("&&", 1)[1].split("#", 1)[0].strip()
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_the_main_job_starts_from_the_committed_base(tmp_path, monkeypatch):
    """The main job takes the shipped walker-stand base (never fits it) and its plan passes
    every check on a fresh store; the skills and composers get the paper's budgets."""
    from library.store import SkillStore
    from pipeline.checks import check_plan
    from pipeline.plan import plan_stream
    from tasks.spec import load_stream

    monkeypatch.chdir(README.parent)
    stream = load_stream("configs/dmc_walker.yaml", "main")
    plan = plan_stream(stream)
    shipped = SkillStore("bases/walker-stand").entry("walker-stand")
    base = plan.units["walker-stand"].stages[0]
    assert base.steps == shipped.metrics["train_steps"] >= 100_000
    assert shipped.task_spec["train"]["batch_size"] == 1024
    stages = {stage.name: stage for unit in plan.units.values() for stage in unit.stages}
    assert stages["walker-walk"].steps == stages["walker-run"].steps == 10_000
    assert {stages[c].steps for c in ("s2w", "s2r", "sw2r")} == {1000}
    assert all(stage.batch_size == 1024 for stage in stages.values())
    check_plan(plan, SkillStore(str(tmp_path / "store")))


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path, monkeypatch, capsys):
    (block,) = python_blocks()
    store = tmp_path / "store"
    code = block.replace("/tmp/psec-readme-store", str(store))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "α(s):" in out and "stored skill 'left':" in out
    composer, states = namespace["composer"], namespace["states"]
    alpha = composer.alpha(states)
    # The composer must route each half of the state space to the skill that fits it.
    assert alpha[0, 0] > alpha[0, 1] and alpha[1, 1] > alpha[1, 0]
    actions = torch.stack([composer.sample(states) for _ in range(8)]).mean(0)
    assert actions[0, 0] > 0.3 and actions[1, 0] < -0.3
    assert (store / "manifest" / "left.json").exists()
