"""The CW10 stream at smoke scale on 2 CPUs, cut to its first two tasks: scripted
Meta-World data, a base on tasks outside CW10, two LoRA skills with their composers,
the continual re-evaluations, and the continual metrics computed from the results.

The whole ten-task stream at smoke scale takes longer than a test should (every task
re-evaluates every earlier one); `psec run configs/cw10.yaml --scale smoke` runs it.
"""

import os

import pytest
import torch
import yaml

from library.store import SkillStore
from pipeline.continual_report import (
    SCRATCH_SUFFIX,
    continual_tasks,
    stream_metrics,
    success_matrix,
)
from pipeline.driver import DriverOptions, run_stream_file
from pipeline.report import write_report
from tasks.spec import load_stream

STREAM = os.path.join(os.path.dirname(__file__), "..", "configs", "cw10.yaml")
SCRATCH = os.path.join(os.path.dirname(__file__), "..", "configs", "cw10_scratch.yaml")
CW_TASKS = ["hammer-v3", "push-wall-v3"]

torch.set_num_threads(1)


def first_tasks_stream(path: str) -> str:
    """configs/cw10.yaml with the base and the first two CW10 tasks; the base's data
    comes from two of its ten envs."""
    with open(STREAM) as f:
        stream = yaml.safe_load(f)
    base, *cw = stream["tasks"]
    base["data"]["envs"] = base["data"]["envs"][:2]
    stream["tasks"] = [base, *cw[: len(CW_TASKS)]]
    kept = {task["name"] for task in stream["tasks"]}
    for scale in stream["scales"].values():  # per-task sizes may name only kept tasks
        if isinstance(scale.get("data_episodes"), dict):
            scale["data_episodes"] = {name: n for name, n in scale["data_episodes"].items()
                                      if name in kept}
    with open(path, "w") as f:
        yaml.safe_dump(stream, f)
    return path


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_each_cw10_skill_has_a_scratch_reference_of_the_same_budget(scale):
    cw10 = load_stream(STREAM, scale)
    scratch = {task.name: task for task in load_stream(SCRATCH, scale).tasks}
    skills = [task for task in cw10.tasks if task.role == "skill"]
    assert [task.env for task in skills][:2] == ["hammer-v3", "push-wall-v3"]
    assert len(skills) == 10 and len(scratch) == 10
    for skill in skills:
        reference = scratch[skill.name + SCRATCH_SUFFIX]
        assert reference.role == "base" and reference.env == skill.env
        assert (reference.data.source, reference.data.dataset) == ("store", skill.name)
        assert reference.train.steps == skill.train.steps
        assert reference.train.batch_size == skill.train.batch_size
        assert reference.eval == skill.eval


@pytest.mark.slow
def test_cw10_first_tasks_at_smoke_scale(ray_cluster, tmp_path):
    store_uri = str(tmp_path / "store")
    stream_path = first_tasks_stream(str(tmp_path / "cw10.yaml"))
    summary = run_stream_file(stream_path, store_uri, scale="smoke",
                              options=DriverOptions(progress=False))
    store = SkillStore(store_uri)
    items = {entry.name: entry for entry in store.list()}
    assert set(items) == {"mw-base", *CW_TASKS, "hammer-psec", "push-wall-psec"}
    assert all(items[name].parent == "mw-base" for name in CW_TASKS)
    # Each fitted item records the run's seed: a store holds one seed's run.
    assert {items[name].metrics["stream_seed"] for name in CW_TASKS} == {0}

    rows = store.results().to_pylist()
    assert {row["scale"] for row in rows} == {"smoke"}
    # Every task's own skill evaluated after it and after every later task.
    assert continual_tasks(rows) == CW_TASKS
    p = success_matrix(rows, CW_TASKS)
    for t in range(len(CW_TASKS)):
        for i in range(len(CW_TASKS)):
            assert (0.0 <= p[t, i] <= 1.0) if i <= t else p[t, i] != p[t, i]  # NaN above
    # Each skill's learning curve (smoke: curve_points 2 of 100 steps); its last point
    # rolled out the registered weights on the episodes of eval seed 0, the only seed here.
    for i, name in enumerate(CW_TASKS):
        curve = items[name].metrics["curve"]
        assert curve["steps"] == [0, 50, 100] and curve["lost"] == []
        assert all(0.0 <= score <= 1.0 for score in curve["scores"])
        assert curve["scores"][-1] == p[i, i]
    assert "curve" not in items["mw-base"].metrics
    # Frozen items are not rolled out again after later tasks but replayed: mw-base after
    # hammer, mw-base and hammer after push-wall (one eval seed), each row a copy of the
    # item's first rollout (pipeline/replay.py; tests/test_pipeline_dmc.py rolls them out).
    first = {row["name"]: row for row in rows if row["task"] == row["eval_task"]}
    replays = [row for row in rows if row["replay_of"] is not None]
    assert summary.replayed == 3
    assert sorted((row["task"], row["name"]) for row in replays) == [
        ("hammer-v3", "mw-base"), ("push-wall-v3", "hammer-v3"), ("push-wall-v3", "mw-base")]
    for row in replays:
        assert row["replay_of"] == row["name"]
        assert row["return_mean"] == first[row["name"]]["return_mean"]
    # Frozen skills, seeded rollouts: a skill's success never changes later in the stream.
    _, metrics = stream_metrics(rows, rows)
    assert metrics.task_forgetting == [0.0, 0.0] and metrics.forgetting == 0.0
    assert metrics.average_success == pytest.approx(p[-1].mean())

    report = write_report(store.results(), str(tmp_path / "report"), "psec report")
    lines = open(report).read().splitlines()
    assert f"average success {metrics.average_success:.2f}" in lines
    assert "forgetting 0.00" in lines and "forward transfer —" in lines
    assert (tmp_path / "report" / "cw10-success.png").exists()


@pytest.mark.parametrize("scale", ["smoke", "paper"])
def test_the_base_pretrains_on_the_meta_world_tasks_outside_cw10(scale):
    from metaworld.env_dict import MT50_V3  # the names, without building MT50's 50 envs

    base, *skills = load_stream(STREAM, scale).tasks
    cw10 = [task.env for task in skills]
    outside = set(MT50_V3) - set(cw10)
    assert len(cw10) == 10 and len(outside) == 40
    if scale == "paper":  # appendix F.1: all 40, 100 scripted episodes each
        assert sorted(base.data.envs) == sorted(outside) and base.data.episodes == 100
    else:  # smoke keeps ten of them (data_envs)
        assert len(base.data.envs) == 10 and set(base.data.envs) < outside
