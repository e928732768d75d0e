"""Composer tasks (role `composer`: composers over stored skills, no skill of their own),
evaluation in other envs (`eval.envs`, the zero-shot setting) and scales that keep a few
tasks (`Scale.tasks`): spec errors, plans, checks and result keys. No Ray is started."""

import pytest
from pipeline_builders import put_datasets, tiny_task

from library.errors import PsecError, ShapeError, SpecError
from pipeline.checks import check_plan
from pipeline.driver import planned_results, recorded_results
from pipeline.plan import plan_stream, plan_task
from pipeline.results import ResultRow, existing_env_keys, now
from tasks.spec import parse_stream, parse_task


def task(name, role="skill", composers=(), **extra):
    return {"name": name, "suite": "dmc", "env": "walker-walk", "role": role,
            "data": {"source": "store", "dataset": "d"}, "composers": list(composers),
            **extra}


def unseen_stream(scales=None, **zero_shot):
    """A base, two skills, a few-shot composer task and a zero-shot composer task that
    trains on the base's dataset and is evaluated in other envs."""
    return {
        "name": "unseen", "continual": False,
        "tasks": [
            task("base0", role="base", data={"source": "import", "format": "parquet",
                                             "path": "x.parquet"}),
            task("stand"),
            task("walk"),
            task("run", role="composer", env="walker-run", composers=[
                {"name": "run-psec", "skills": ["base", "stand", "walk"],
                 "data": {"fraction": 0.1}},
                {"name": "run-nsec", "skills": ["stand", "walk"], "mode": "noise"}]),
            task("zero", role="composer", data={"source": "store", "dataset": "base0"},
                 composers=[{"name": "zero-psec", "skills": ["stand", "walk"]}],
                 eval={"envs": ["walker-run", "walker-stand"]}, **zero_shot),
        ],
        "scales": scales or {"smoke": {}, "paper": {}},
    }


def error_of(data) -> str:
    with pytest.raises(SpecError) as info:
        parse_stream(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_composer_task_composes_only_stored_skills_and_produces_only_composers():
    stream = parse_stream(unseen_stream())
    run = stream.task("run")
    assert run.base == "base0"  # the latest base, as for a skill
    assert run.stored_names() == ["run-psec", "run-nsec"]
    assert run.composer_skills(run.composers[0]) == ["base", "stand", "walk"]
    assert stream.task("zero").eval_envs == ["walker-run", "walker-stand"]
    assert run.eval_envs == ["walker-run"]


@pytest.mark.parametrize("change, field, words", [
    ({"composers": []}, "tasks[3].composers", "at least one composer"),
    ({"objective": "advantage"}, "tasks[3].objective", "use 'bc'"),
    ({"lora": {"rank": 4}}, "tasks[3].lora", "no skill of its own"),
    ({"eval": {"envs": ["walker-fly"]}}, "tasks[3].eval.envs[0]", "walker-fly"),
    ({"composers": [{"name": "stand", "skills": ["walk"]}]}, "tasks[3].composers[0].name",
     "already produced by tasks[1]"),
])
def test_bad_composer_tasks_name_the_field(change, field, words):
    data = unseen_stream()
    data["tasks"][3].update(change)
    message = error_of(data)
    assert message.startswith(f"{field}: ") and words in message


def test_a_composer_task_is_not_a_skill_to_compose():
    data = unseen_stream()
    data["tasks"].append(task("later", composers=[{"name": "later-psec", "skills": ["run"]}]))
    assert error_of(data) == ("tasks[5].composers[0].skills[0]: 'run' is a composer task: "
                              "it stores no skill")


def test_single_controls_are_the_composed_items_but_the_tasks_own_skill():
    data = unseen_stream()
    data["tasks"][3]["eval"] = {"controls": ["single"]}
    data["tasks"][2]["composers"] = [{"name": "walk-psec", "skills": ["stand"]}]
    data["tasks"][2]["eval"] = {"controls": ["single"], "seeds": [0, 1]}
    stream = parse_stream(data)
    # The base by its name, each stored skill once, in first-listed order.
    assert stream.task("run").control_items() == ["base0", "stand", "walk"]
    # A skill task's own skill is its item already, not a control.
    assert stream.task("walk").control_items() == ["stand"]
    assert stream.task("zero").control_items() == []  # no `controls`
    keys = planned_results(plan_stream(stream))
    assert {("unseen", "run", item, "run", "walker-run", 0)
            for item in ("base0", "stand", "walk")} <= keys
    assert {("unseen", "walk", "stand", "walk", "walker-walk", seed) for seed in (0, 1)} <= keys
    assert not any(key[1] == "zero" and key[2] in ("stand", "walk") for key in keys)


def test_controls_need_a_composer():
    data = unseen_stream()
    data["tasks"][1]["eval"] = {"controls": ["single"]}
    assert "tasks[1].eval.controls" in error_of(data) and "no composer" in error_of(data)


def test_a_scale_keeps_a_few_tasks_and_the_first_eval_envs():
    smoke = {"tasks": ["base0", "stand", "walk", "zero"], "eval_envs": 1}
    # The paper scale names a task the smoke scale drops: checked on the whole stream only.
    paper = {"data_episodes": {"run": 5}}
    data = unseen_stream({"smoke": smoke, "paper": paper})
    data["tasks"][3]["data"] = {"source": "generate", "policy": "random", "episodes": 1}
    stream = parse_stream(data).at_scale("smoke")
    assert [t.name for t in stream.tasks] == ["base0", "stand", "walk", "zero"]
    assert stream.task("zero").eval_envs == ["walker-run"]
    assert stream.at_scale("smoke") == stream


@pytest.mark.parametrize("kept, field, words", [
    (["base0", "nope"], "scales.smoke.tasks[1]", "no task named 'nope'"),
    (["base0", "stand", "stand"], "scales.smoke.tasks[2]", "'stand' is listed twice"),
    (["base0", "run"], "scales.smoke.tasks[1]",
     "composer 'run-psec' of 'run' needs at least one of its skills (stand, walk) kept"),
    (["stand"], "scales.smoke.tasks[0]", "'stand' needs 'base0' (its base), which is not kept"),
])
def test_a_scale_must_keep_what_its_tasks_need(kept, field, words):
    assert error_of(unseen_stream({"smoke": {"tasks": kept}, "paper": {}})) == f"{field}: {words}"


def test_a_scale_cuts_the_composers_to_the_kept_skills():
    data = unseen_stream({"smoke": {"tasks": ["base0", "stand", "run"]}, "paper": {}})
    run = parse_stream(data).at_scale("smoke").task("run")
    assert [c.skills for c in run.composers] == [["base", "stand"], ["stand"]]


def test_a_scale_must_keep_the_task_that_makes_a_reused_dataset():
    data = unseen_stream({"smoke": {"tasks": ["base0", "stand", "zero"]}, "paper": {}})
    data["tasks"][2]["data"] = {"source": "generate", "policy": "random", "episodes": 1}
    data["tasks"][4]["data"] = {"source": "store", "dataset": "walk"}
    data["tasks"][4]["composers"][0]["skills"] = ["stand"]
    assert error_of(data) == ("scales.smoke.tasks[2]: 'zero' needs 'walk' (its dataset), "
                              "which is not kept")


def test_a_composer_task_is_one_unit_after_its_base_and_skills():
    plan = plan_stream(parse_stream(unseen_stream()))
    run, zero = plan.units["run"], plan.units["zero"]
    assert [s.name for s in run.stages] == ["run-psec", "run-nsec"]
    assert [s.kind for s in run.stages] == ["composer", "composer"]
    assert run.stages[0].skills == ["base", "stand", "walk"]
    assert [s.method for s in run.stages] == ["psec", "nsec"]
    assert run.stages[0].composer.data.fraction == 0.1
    assert run.after == ["base0", "stand", "walk"] and run.needs == ["base0", "stand", "walk"]
    assert zero.dataset == "base0" and zero.after == ["base0", "stand", "walk"]
    assert plan.tasks[3].items == ["run-psec", "run-nsec"] and plan.tasks[3].units == ["run"]


def test_a_submitted_composer_task_goes_on_the_newest_base():
    composer = parse_task(task("run", role="composer",
                               composers=[{"name": "r", "skills": ["walk"]}]))
    plan = plan_task(composer, ["old", "new"])
    assert plan.units["run"].needs == ["new", "walk"] and plan.units["run"].after == []
    assert plan.tasks[0].task.base == "new"


def test_planned_results_cover_every_eval_env_and_skip_composer_tasks_in_the_matrix():
    data = unseen_stream()
    data["continual"] = True
    keys = planned_results(plan_stream(parse_stream(data)))
    assert ("unseen", "zero", "zero-psec", "zero", "walker-stand", 0) in keys
    assert ("unseen", "zero", "zero-psec", "zero", "walker-walk", 0) not in keys
    # After the last task the continual matrix re-evaluates skills, not composer tasks.
    assert ("unseen", "zero", "stand", "stand", "walker-walk", 0) in keys
    assert not any(key[2] == "run" for key in keys)


def test_rows_without_an_env_count_as_rolled_out_in_their_eval_tasks_env():
    import pyarrow as pa

    def row(name, eval_task, env):
        return ResultRow(stream="unseen", task=eval_task, position=0, name=name,
                         kind="composer", method="psec", composer=name, skills=[], seed=0,
                         eval_task=eval_task, env=env, episodes=1, return_mean=0.0,
                         return_std=0.0, score=0.0, success=0.0, cost=0.0, steps=1,
                         wall_s=0.0, scale="smoke", time=now()).model_dump(mode="json")

    old = {key: value for key, value in row("run-psec", "run", None).items() if key != "env"}
    table = pa.concat_tables([pa.Table.from_pylist([old]),
                              pa.Table.from_pylist([row("zero-psec", "zero", "walker-stand")])],
                             promote_options="permissive")
    assert existing_env_keys(table) == {("unseen", "run", "run-psec", "run", None, 0),
                                        ("unseen", "zero", "zero-psec", "zero", "walker-stand",
                                         0)}
    plan = plan_stream(parse_stream(unseen_stream()))
    assert recorded_results(plan, table) == {
        ("unseen", "run", "run-psec", "run", "walker-run", 0),
        ("unseen", "zero", "zero-psec", "zero", "walker-stand", 0)}


def test_checks_accept_a_dataset_made_earlier_in_the_plan_and_refuse_foreign_eval_envs(
        tmp_path):
    uri = str(tmp_path / "store")
    base = tiny_task("base0", role="base")
    base["data"] = {"source": "generate", "policy": "random", "episodes": 1}
    # `zero` trains on the dataset `base0` will generate: not in the store at check time.
    zero = tiny_task("zero", role="composer", composers=[{"name": "z", "skills": ["walk"]}],
                     eval={"envs": ["walker-run"], "episodes": 1})
    zero["data"] = {"source": "store", "dataset": "base0"}
    tasks = [base, tiny_task("walk"), zero]
    store = put_datasets(uri, tasks[1:2])
    stream = {"name": "tiny", "continual": False, "tasks": tasks,
              "scales": {"smoke": {}, "paper": {}}}
    checked = check_plan(plan_stream(parse_stream(stream)), store)
    assert checked.dims["zero"] == (24, 6) and not store.has_dataset("base0")
    zero["eval"]["envs"] = ["cheetah-run"]
    with pytest.raises(ShapeError) as info:
        check_plan(plan_stream(parse_stream(stream)), store)
    assert "eval env 'cheetah-run' has obs/act dims 17/6" in str(info.value)
    assert isinstance(info.value, PsecError) and store.list() == []


def test_only_an_action_composer_takes_action_draws():
    data = unseen_stream()
    data["tasks"][3]["composers"][0]["action_draws"] = 8  # run-psec: parameter mode
    message = error_of(data)
    assert "tasks[3].composers[0]" in message and "action_draws" in message
    data["tasks"][3]["composers"][0]["mode"] = "action"
    assert parse_stream(data).task("run").composers[0].action_draws == 8
