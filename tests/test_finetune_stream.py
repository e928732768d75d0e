"""Fine-tuning: a base that starts from another base's weights (`init`), the CW10 baseline
that forgets (configs/cw10_finetune.yaml), and its continual metrics in `psec report`."""

import math
import os

import pyarrow as pa
import pytest
import torch
from pipeline_builders import put_datasets, tiny_task, write_stream
from test_continual_report import row

from library.errors import PsecError
from library.serialization import load_base, split_item
from library.store import SkillStore
from pipeline.continual_report import sequential_metrics, sequential_tasks
from pipeline.driver import DriverOptions, run_plan
from pipeline.fit_job import FitOptions
from pipeline.plan import plan_stream
from pipeline.report import write_report
from tasks.spec import load_stream, parse_task

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")
EVAL = {"episodes": 1, "seeds": [0], "max_steps": 10}

torch.set_num_threads(1)


@pytest.mark.parametrize("fields, message", [
    ({"role": "skill", "base": "stand", "init": "stand"}, "only a base task starts from"),
    ({"role": "base", "init": "stand", "network": {"block_width": 4}}, "has that base's network"),
    ({"role": "base", "init": "stand", "shipped": "bases/x"}, "drop init"),
])
def test_init_is_for_a_base_that_trains_on_another_base_s_network(fields, message):
    with pytest.raises(PsecError, match=message):
        parse_task({**tiny_task("walk"), **fields})


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_the_finetuning_baseline_trains_one_network_through_cw10(scale):
    cw10 = [t for t in load_stream(os.path.join(CONFIGS, "cw10.yaml"), scale).tasks
            if t.role == "skill"]
    finetune = load_stream(os.path.join(CONFIGS, "cw10_finetune.yaml"), scale).tasks
    assert [t.env for t in finetune] == [t.env for t in cw10]
    assert [t.init for t in finetune] == ["mw-base", *(t.name for t in finetune[:-1])]
    for k, (ours, skill) in enumerate(zip(finetune, cw10)):
        # The same demonstrations, budget and evaluation as the CW10 skill of that task,
        # rolled out in every env so far.
        assert (ours.role, ours.data.source, ours.data.dataset) == ("base", "store", skill.name)
        assert (ours.train.steps, ours.train.batch_size) == (skill.train.steps,
                                                            skill.train.batch_size)
        assert ours.eval.envs == [t.env for t in cw10[: k + 1]]
        assert ours.eval.model_dump(exclude={"envs"}) == skill.eval.model_dump(exclude={"envs"})


def finetune_rows():
    """Task a, then b and c fine-tuned from it: each network in every env so far; b's
    network still scores 1.0 on a, c's has forgotten a (0.0) and half of b."""
    rows = [row("a", 0, "a", "a", 1.0, kind="base", method="base")]
    for after, position, scores in (("b", 1, (1.0, 0.5)), ("c", 2, (0.0, 0.25, 1.0))):
        for env, score in zip(("env-a", "env-b", "env-c"), scores):
            rows.append({**row(after, position, after, after, score, kind="base",
                               method="base"), "env": env})
    rows[0]["env"] = "env-a"
    return rows


def test_the_matrix_of_a_finetuning_stream_is_the_last_network_in_every_env(tmp_path):
    rows = finetune_rows()
    assert sequential_tasks(rows) == (["a", "b", "c"], ["env-a", "env-b", "env-c"])
    reference = [{**row("x-scratch", 0, "x-scratch", "x-scratch", 0.5, kind="base",
                        method="base", stream="scratch"), "env": "env-b"}]
    p, metrics = sequential_metrics(rows, rows + reference)
    assert p.tolist()[1][:2] == [1.0, 0.5] and p.tolist()[2] == [0.0, 0.25, 1.0]
    assert math.isnan(p[0, 1])
    assert metrics.task_forgetting == [1.0, 0.25, 0.0]
    assert metrics.average_success == pytest.approx(1.25 / 3)
    # Only b has a reference (the scratch base rolled out in env-b): (0.5 - 0.5) / 0.5.
    assert metrics.transfer_from == ["", "final", ""]
    assert metrics.task_forward_transfer[1] == pytest.approx(0.0)
    text = open(write_report(pa.Table.from_pylist(rows + reference), str(tmp_path),
                             "psec report")).read()
    assert "fine-tuned task after task" in text and "forgetting 0.42" in text.splitlines()
    assert (tmp_path / "cw-success.png").stat().st_size > 1000
    # A stream of skills, or of bases that are not evaluated in earlier tasks' envs, is not
    # a fine-tuning stream.
    assert sequential_tasks([r for r in rows if r["env"] == f"env-{r['name']}"]) is None
    assert sequential_tasks([{**r, "kind": "skill"} for r in rows]) is None


@pytest.mark.slow
def test_a_base_fine_tuned_from_another_starts_from_its_weights(ray_cluster, tmp_path):
    store_uri = str(tmp_path / "store")
    tasks = [tiny_task("stand", role="base", steps=20, env="walker-stand"),
             tiny_task("walk", role="base", steps=20, init="stand",
                       eval={**EVAL, "envs": ["walker-stand", "walker-walk"]}),
             tiny_task("run", role="base", steps=20, init="walk", env="walker-run",
                       eval={**EVAL, "envs": ["walker-stand", "walker-walk", "walker-run"]})]
    put_datasets(store_uri, tasks)
    plan = plan_stream(load_stream(write_stream(tmp_path / "s.yaml", tasks)))
    assert plan.units["walk"].after == ["stand"] and plan.units["run"].after == ["walk"]
    run_plan(plan, store_uri, DriverOptions(progress=False, fit=FitOptions(log_every=10)))

    store = SkillStore(store_uri)
    policies = {name: load_base(store.load(name)[0], split_item(store.load(name)[1])[0])
                for name in ("stand", "walk", "run")}
    # The normaliser is the first base's (walk's own data would give another); the weights
    # moved on from it.
    for name in ("walk", "run"):
        assert torch.equal(policies[name].normalizer.mean, policies["stand"].normalizer.mean)
    first = dict(policies["stand"].named_parameters())
    assert any(not torch.equal(first[k], v) for k, v in policies["walk"].named_parameters())
    rows = store.results().to_pylist()
    assert sequential_tasks(rows) == (["stand", "walk", "run"],
                                      ["walker-stand", "walker-walk", "walker-run"])
    p, metrics = sequential_metrics(rows, rows)
    assert not math.isnan(p[2, 0]) and math.isnan(p[0, 2])
    assert metrics.task_forgetting[0] == pytest.approx(p[0, 0] - p[2, 0])
