"""The pipeline's pure parts: planning a stream into a DAG of fit units, sizing fits from
cluster resources, evaluation chunking, result keys and the report. No Ray is started."""

import math
import subprocess

import pyarrow as pa
import pytest

from library.errors import PsecError, SpecError, StoreError
from pipeline.evaluation import EPISODE_SEED_STRIDE, EvalJob, chunks_per_seed
from pipeline.plan import plan_stream, plan_task
from pipeline.report import continual_matrix, latest_cells, write_report
from pipeline.results import ResultRow, existing_keys, now
from pipeline.runtime import plan_fit_resources
from tasks.spec import parse_stream, parse_task


def task(name, role="skill", composers=(), objective="bc", **extra):
    return {"name": name, "suite": "dmc", "env": "walker-walk", "role": role,
            "objective": objective, "data": {"source": "store", "dataset": "d"},
            "composers": list(composers), **extra}


def walker_stream(continual=True):
    return parse_stream({
        "name": "walker", "continual": continual,
        "tasks": [
            task("stand", role="base"),
            task("walk", composers=[{"name": "s2w", "skills": ["base"]}]),
            task("run", composers=[{"name": "s2r", "skills": ["base"]},
                                   {"name": "sw2r", "skills": ["base", "walk"]}]),
        ],
        "scales": {"smoke": {}, "paper": {}},
    })


def test_skills_on_one_base_fit_side_by_side_and_a_composer_waits_for_its_skills():
    plan = plan_stream(walker_stream())
    units = plan.units
    assert list(units) == ["stand", "walk", "run", "sw2r"]
    # walk and run wait only for the base, so they run in parallel.
    assert units["walk"].after == ["stand"] and units["run"].after == ["stand"]
    # A composer whose skills are ready when its task's unit starts rides along with it...
    assert [s.name for s in units["walk"].stages] == ["walk", "s2w"]
    assert [s.name for s in units["run"].stages] == ["run", "s2r"]
    # ...one that needs a skill fitted in parallel (walk) gets a unit waiting for both.
    assert units["sw2r"].after == ["run", "walk"]
    assert units["sw2r"].stages[0].skills == ["base", "walk", "run"]
    assert units["sw2r"].needs == ["stand", "walk", "run"]
    assert plan.tasks[2].units == ["run", "sw2r"]
    assert plan.tasks[2].items == ["run", "s2r", "sw2r"]
    assert {s.method for u in units.values() for s in u.stages} == {"base", "skill", "psec"}


def test_a_composer_over_skills_of_an_ancestor_unit_stays_in_its_task_unit():
    stream = parse_stream({
        "name": "chain", "tasks": [
            task("stand", role="base"),
            task("walk"),
            task("run", base="stand", composers=[{"name": "wr", "skills": ["walk"]}]),
        ], "scales": {"smoke": {}, "paper": {}}})
    plan = plan_stream(stream)
    # run does not wait for walk, so wr cannot join run's unit...
    assert "wr" in plan.units
    # ...but seeds and names are stable: the plan is a pure function of the stream.
    assert plan_stream(stream).model_dump() == plan.model_dump()


def test_an_item_is_evaluated_once_registered_and_the_matrix_once_its_tasks_are_fitted():
    """The run skill and S→R are rolled out on run while S+W→R (a later unit of the same
    task) still fits; the re-evaluations after run wait for all of run's items."""
    from pipeline.driver import Driver

    plan = plan_stream(walker_stream())
    driver = object.__new__(Driver)  # the scheduling alone: no store, no Ray
    driver.plan, driver.result_keys, driver.rollouts = plan, set(), None
    driver.evaluated_items, driver.evaluated_tasks, driver.continual_done = set(), set(), set()
    started = []
    driver._start_eval = lambda job, pending: started.append((job.item, job.row_task))

    driver.registered = {"stand", "walk", "s2w", "run", "s2r"}
    driver._schedule_evaluations(None, {})
    own = [("stand", "stand"), ("walk", "walk"), ("s2w", "walk"), ("run", "run"),
           ("s2r", "run")]
    assert started == own + [("stand", "walk")]  # the matrix after walk, not after run

    started.clear()
    driver.registered.add("sw2r")
    driver._schedule_evaluations(None, {})
    assert started == [("sw2r", "run"), ("stand", "run"), ("walk", "run")]
    started.clear()
    driver._schedule_evaluations(None, {})
    assert started == []


def test_a_run_summary_says_where_the_time_went():
    from pipeline.driver import StreamSummary

    summary = StreamSummary("walker", "main", "file:///s", dataset_seconds={"walk": 12.4},
                            unit_seconds={"walk": 548.2, "sw2r": 61.0},
                            eval_seconds={"a": 10.0, "b": 31.0}, wall_seconds=640.0)
    lines = summary.describe().splitlines()
    assert lines[0].endswith(", 640 s")
    assert lines[1:] == ["  time: datasets walk 12 s", "  time: fit units walk 548 s, sw2r 61 s",
                         "  time: 2 rollout job(s), 41 s in all, the longest 31 s"]
    assert len(StreamSummary("w", "smoke", "s").describe().splitlines()) == 1  # nothing ran


def test_critics_come_first_and_stage_seeds_differ():
    stream = parse_stream({
        "name": "adv", "tasks": [
            task("stand", role="base"),
            task("walk", objective="advantage",
                 composers=[{"name": "s2w", "skills": ["base"], "mode": "noise"}]),
        ], "scales": {"smoke": {}, "paper": {}}})
    unit = plan_stream(stream).units["walk"]
    assert [s.kind for s in unit.stages] == ["critics", "skill", "composer"]
    assert unit.stages[0].name == "walk-critics" and not unit.stages[0].stored
    assert unit.produces() == ["walk", "s2w"]
    assert unit.stages[2].method == "nsec"
    assert len({s.seed for s in unit.stages}) == 3


def test_another_root_seed_changes_every_stage_seed_and_rides_in_the_plan():
    first = plan_stream(walker_stream())
    second = plan_stream(walker_stream().model_copy(update={"seed": 1}))  # psec run --seed 1
    assert (first.seed, second.seed) == (0, 1)

    def seeds(plan):
        return {stage.name: stage.seed for unit in plan.units.values() for stage in unit.stages}

    assert seeds(first).keys() == seeds(second).keys()
    assert all(seeds(first)[name] != seeds(second)[name] for name in seeds(first))


def test_a_composer_weighing_by_advantage_gets_critics_fitted_on_its_task_s_data():
    """A bc skill whose composer weighs by advantage: the critics are fitted first (on the
    skill task's data, stored in its item), not missed inside the composer's fit."""
    from pipeline.stages import _critic_configs

    stream = parse_stream({
        "name": "adv", "tasks": [
            task("stand", role="base"),
            task("walk", critic={"reward_norm": "none"},
                 composers=[{"name": "s2w", "skills": ["base"], "objective": "advantage"}]),
        ], "scales": {"smoke": {}, "paper": {}}})
    walk = stream.tasks[1]
    assert walk.needs_critic and walk.objectives == {"bc", "advantage"}
    unit = plan_stream(stream).units["walk"]
    assert [s.kind for s in unit.stages] == ["critics", "skill", "composer"]
    assert set(_critic_configs(walk, 3, 2, table=None)) == {"iql"}
    assert _critic_configs(walk, 3, 2, table=None)["iql"].stop_at_timeouts is False
    cut = walk.model_copy(update={"critic": walk.critic.model_copy(
        update={"stop_at_timeouts": True})})
    assert _critic_configs(cut, 3, 2, table=None)["iql"].stop_at_timeouts is True
    # A composer task has no item to keep critics in: refused, naming the composer's field.
    with pytest.raises(SpecError, match=r"composers\[0\]\.objective.*'advantage' needs critics"):
        parse_stream({"name": "x", "tasks": [
            task("stand", role="base"),
            task("mix", role="composer", composers=[
                {"name": "m", "skills": ["stand"], "objective": "advantage"}])],
            "scales": {"smoke": {}, "paper": {}}})


def test_mlp_method_names_full_rank_parameter_composition():
    stream = parse_stream({
        "name": "mlp", "tasks": [
            task("stand", role="base"),
            task("walk", lora={"kind": "full"}, composers=[{"name": "s2w", "skills": ["base"]}]),
        ], "scales": {"smoke": {}, "paper": {}}})
    assert plan_stream(stream).stage("s2w").method == "mlp"


def test_a_random_bank_composer_is_labelled_as_the_control_it_is():
    stream = parse_stream({
        "name": "bank", "tasks": [
            task("stand", role="base"), task("walk"),
            task("run", composers=[{"name": "rnd", "skills": ["base", "walk"],
                                    "bank": "random"}]),
        ], "scales": {"smoke": {}, "paper": {}}})
    assert plan_stream(stream).stage("rnd").method == "random"


def test_a_submitted_task_goes_on_the_newest_stored_base():
    plan = plan_task(parse_task(task("walk")), bases=["old", "stand"], position=3)
    unit = plan.units["walk"]
    assert unit.task.base == "stand" and unit.needs == ["stand"] and unit.after == []
    assert plan.tasks[0].position == 3
    with pytest.raises(SpecError, match="base: the store holds no base"):
        plan_task(parse_task(task("walk")), bases=[])
    with pytest.raises(StoreError, match="base 'gone'"):
        plan_task(parse_task(task("walk", base="gone")), bases=["stand"])


@pytest.mark.parametrize(
    "resources, kwargs, expected",
    [
        ({"CPU": 2.0}, {}, (1, 1, 0.0)),  # 2 CPUs: two 1-worker fits side by side
        ({"CPU": 2.0}, {"concurrent_fits": 1}, (2, 1, 0.0)),  # one fit: data-parallel
        ({"CPU": 2.0}, {"workers": 8}, (2, 1, 0.0)),  # never more workers than CPUs
        ({"CPU": 2.0}, {"cpus_per_worker": 4}, (1, 2, 0.0)),  # nor more CPUs
        ({"CPU": 16.0}, {}, (8, 1, 0.0)),
        ({"CPU": 8.0, "GPU": 1.0}, {}, (1, 4, 0.5)),  # two fits share the GPU
        ({"CPU": 16.0, "GPU": 4.0}, {}, (2, 4, 1.0)),  # enough GPUs: whole ones
        ({"CPU": 1.0}, {"concurrent_fits": 2}, (1, 1, 0.0)),
    ],
)
def test_fits_are_sized_from_what_the_cluster_holds(resources, kwargs, expected):
    sized = plan_fit_resources(resources, **kwargs)
    assert (sized.workers, sized.cpus_per_worker, sized.gpus_per_worker) == expected
    assert sized.workers * sized.cpus_per_worker <= resources["CPU"]


def test_a_cluster_without_cpus_is_a_clear_error():
    with pytest.raises(PsecError, match="no CPU"):
        plan_fit_resources({"GPU": 1.0})


def test_evaluation_chunks_fill_the_cpus_and_keep_episode_seeds():
    assert chunks_per_seed(episodes=10, seeds=1, cpus=2) == 2
    assert chunks_per_seed(episodes=10, seeds=3, cpus=2) == 1
    assert chunks_per_seed(episodes=1, seeds=1, cpus=16) == 1
    job = EvalJob(item="walk", task=parse_task(task("walk", base="stand")), row_task="walk",
                  position=1, seeds=[0, 2])
    assert job.episodes_per_seed == 10 and job.key() == ("walk", "walk", "walk", "walker-walk")
    # Chunks never overlap: seed s owns env seeds [s·stride, (s+1)·stride).
    assert EPISODE_SEED_STRIDE > 10_000


def row(task_name, position, name, eval_task, seed, score, method="skill"):
    return ResultRow(stream="s", task=task_name, position=position, name=name, kind="skill",
                     method=method, composer=None, skills=[name], seed=seed,
                     eval_task=eval_task, episodes=2, return_mean=10 * score, return_std=0.0,
                     score=score, success=0.0, cost=0.0, steps=5, wall_s=1.0, scale="smoke",
                     time=now()).model_dump(mode="json")


def test_result_keys_and_report_tables(tmp_path):
    rows = [row("a", 0, "a", "a", 0, 1.0), row("a", 0, "a", "a", 1, 3.0),
            row("b", 1, "b", "b", 0, 5.0), row("b", 1, "a", "a", 0, 1.5),
            row("b", 1, "ab", "b", 0, 6.0, method="psec")]
    table = pa.Table.from_pylist(rows)
    assert ("s", "b", "a", "a", 0) in existing_keys(table)
    assert existing_keys(pa.table({})) == set()
    cells = {(c.name, c.eval_task): c for c in latest_cells(rows)}
    # The latest evaluation of a on a is the one made after b (position 1), one seed.
    assert cells[("a", "a")].scores == [1.5]
    tasks, columns, means = continual_matrix(rows)
    assert tasks == ["a", "b"] and columns == ["a", "b"]
    assert means[("a", "a")] == 2.0 and means[("b", "a")] == 1.5 and ("a", "b") not in means
    path = write_report(table, str(tmp_path / "out"), "psec report --out out")
    text = open(path).read()
    assert "| b | ab | psec |" in text and "psec report --out out" in text
    assert "| b | 1.5 | 5 |" in text  # continual matrix row after b
    assert (tmp_path / "out" / "s-scores.png").stat().st_size > 1000
    assert (tmp_path / "out" / "s-continual.png").exists()
    assert not math.isnan(cells[("ab", "b")].score[0])


def test_a_stream_without_re_evaluations_gets_no_continual_matrix(tmp_path):
    rows = [row("a", 0, "a", "a", 0, 1.0), row("b", 1, "b", "b", 0, 5.0)]
    path = write_report(pa.Table.from_pylist(rows), str(tmp_path / "out"), "psec report")
    assert "Continual matrix" not in open(path).read()
    assert not (tmp_path / "out" / "s-continual.png").exists()


def test_report_without_results_is_a_user_error(tmp_path):
    with pytest.raises(StoreError, match="no results yet"):
        write_report(pa.table({}), str(tmp_path), "psec report")


def test_cluster_yaml_is_a_valid_ray_launcher_config():
    import os

    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    path = os.path.join(os.path.dirname(__file__), "..", "cluster.yaml")
    with open(path) as f:
        config = prepare_config(yaml.safe_load(f))
    validate_config(config)  # raises on a schema violation
    assert config["provider"]["type"] == "aws"
    assert {"head", "cpu_worker", "gpu_worker"} <= set(config["available_node_types"])
    setup = " ".join(config["setup_commands"])
    assert "torch==2.13.0" in setup and "psec" in setup


def test_a_local_ray_keeps_spare_idle_workers_unless_the_user_set_the_limit(monkeypatch):
    import os

    from pipeline.runtime import SPARE_WORKERS, WORKER_LIMIT_VAR, keep_idle_workers

    monkeypatch.delenv(WORKER_LIMIT_VAR, raising=False)
    keep_idle_workers(2)
    assert os.environ[WORKER_LIMIT_VAR] == str(2 + SPARE_WORKERS)
    monkeypatch.setenv(WORKER_LIMIT_VAR, "3")
    keep_idle_workers(2)
    assert os.environ[WORKER_LIMIT_VAR] == "3"


def test_a_checkpoint_fingerprint_ignores_fields_at_their_defaults():
    """A unit's checkpoints are resumed by a later psec whose models gained fields (at
    their defaults); any value that differs still makes another plan."""
    from pipeline.fit_job import FitJob, FitOptions
    from pipeline.plan import FitUnit

    class LaterUnit(FitUnit):  # the same unit as a later version's model would hold it
        added: int = 0

    unit = plan_stream(walker_stream()).units["walk"]
    job = {"stream": "walker", "stream_seed": 0, "workers": 1, "cpus_per_worker": 1,
           "gpus_per_worker": 0.0, "options": FitOptions()}
    now = FitJob(unit=unit, **job).fingerprint()
    later = LaterUnit(**dict(unit))
    assert FitJob(unit=later, **job).fingerprint() == now
    assert FitJob(unit=LaterUnit(**dict(unit), added=1), **job).fingerprint() != now
    steps = unit.model_copy(update={"task": unit.task.model_copy(
        update={"train": unit.task.train.model_copy(update={"steps": 7})})})
    assert FitJob(unit=steps, **job).fingerprint() != now


def test_a_local_ray_that_starts_too_slowly_is_started_again(monkeypatch):
    """Ray waits a fixed 30 s for a new node's raylet; on a busy machine `connect` starts
    its private instance again (twice at most) instead of failing the run. A slow start
    of a cluster it attaches to, or any other error, is not retried."""
    import ray

    from pipeline import runtime

    for var, value in ((runtime.WORKER_LIMIT_VAR, "4"), (runtime.AUTH_MODE_VAR, "disabled")):
        monkeypatch.setenv(var, value)  # connect sets them otherwise, for the whole session
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    calls: list[str] = []
    outcomes: list[Exception | None] = []

    started: list[subprocess.Popen] = []

    def init(address=None, **kwargs):
        calls.append(address)
        if outcome := outcomes.pop(0):
            started.append(subprocess.Popen(["sleep", "60"]))  # as a GCS left behind
            raise outcome

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    slow = Exception("The current node timed out during startup. This could happen ...")

    outcomes[:] = [slow, slow, None]
    runtime.connect()
    assert calls == ["local", "shutdown", "local", "shutdown", "local"]
    # What a failed attempt started is stopped (and reaped) before the next one.
    assert len(started) == 2 and all(process.poll() is not None for process in started)

    calls.clear()
    outcomes[:] = [slow, slow, slow]
    with pytest.raises(PsecError, match="did not start in 3 attempts"):
        runtime.connect()
    assert calls.count("local") == 3

    calls.clear()
    outcomes[:] = [slow]
    monkeypatch.setattr(runtime, "check_reachable", lambda address: None)
    with pytest.raises(Exception, match="timed out during startup"):
        runtime.connect("10.0.0.1:6379")
    assert calls == ["10.0.0.1:6379"]

    calls.clear()
    outcomes[:] = [RuntimeError("something else")]
    with pytest.raises(RuntimeError, match="something else"):
        runtime.connect()
    assert calls == ["local"]
    for process in started:  # the attempts not retried left theirs
        process.kill()
        process.wait()


@pytest.mark.parametrize("command", [["run", "s.yaml"], ["tune", "s.yaml"], ["serve"],
                                     ["eval", "item"]])
def test_cpus_sizes_the_private_local_instance_only(monkeypatch, command):
    """`--cpus N`: the local instance `connect` starts offers N logical CPUs; with a cluster
    address it is refused before anything connects."""
    import ray

    from pipeline import runtime
    from pipeline.cli import build_parser

    for var, value in ((runtime.WORKER_LIMIT_VAR, "4"), (runtime.AUTH_MODE_VAR, "disabled")):
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(runtime, "_local_cpus", None)  # restored after the test
    inits: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda address=None, **kwargs: inits.append(kwargs))

    runtime.use_cpus_option(build_parser().parse_args([*command, "--cpus", "3"]))
    runtime.connect()
    assert inits[-1]["num_cpus"] == 3
    runtime.connect(num_cpus=2)  # a caller's own size still wins (the tests' instance)
    assert inits[-1]["num_cpus"] == 2
    with pytest.raises(PsecError, match="--cpus must be >= 1"):
        runtime.use_cpus_option(build_parser().parse_args([*command, "--cpus", "0"]))
    with pytest.raises(PsecError, match="the cluster at '10.0.0.1:6379' has its own CPUs"):
        runtime.use_cpus_option(build_parser().parse_args(
            [*command, "--cpus", "3", "--address", "10.0.0.1:6379"]))
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # under `ray job submit`
    with pytest.raises(PsecError, match="'auto' has its own CPUs"):
        runtime.use_cpus_option(build_parser().parse_args([*command, "--cpus", "3"]))


def test_cluster_yaml_starts_every_node_with_the_worker_limit():
    """The limit the start commands compute is pipeline.runtime.worker_limit() (the
    node's venv python replaced by the one running the tests)."""
    import os
    import re
    import subprocess
    import sys

    import yaml

    from pipeline.runtime import WORKER_LIMIT_VAR, worker_limit

    path = os.path.join(os.path.dirname(__file__), "..", "cluster.yaml")
    with open(path) as f:
        config = yaml.safe_load(f)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        [start] = [c for c in config[key] if "ray start" in c]
        match = re.search(WORKER_LIMIT_VAR + r"=\$\((.*?)\) \S*ray start", start)
        assert match, start
        command = match.group(1).replace("~/venv/bin/python", sys.executable)
        printed = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                 check=True).stdout
        assert printed.strip() == str(worker_limit())


def test_tasks_whose_generated_data_are_one_table_make_it_once():
    from pipeline.driver import same_data_groups

    def generated(name, role="skill", **data):
        return {"name": name, "suite": "dmc", "env": "walker-walk", "role": role,
                **({} if role == "base" else {"base": "stand"}),
                "data": {"source": "generate", "policy": "random", "episodes": 2, **data}}

    stream = parse_stream({"name": "s", "tasks": [
        generated("stand", role="base"), generated("walk"), generated("run", seed=1),
        generated("hop", episodes=3), generated("jump")], "scales": {"smoke": {}, "paper": {}}})
    plan = plan_stream(stream)
    datasets = [(task_plan.dataset, task_plan.task) for task_plan in plan.tasks]
    groups = same_data_groups(datasets, imported={})
    # stand, walk and jump: the same spec, one table; a data seed or size of its own is not.
    assert [(maker.name, names) for maker, names in groups] == [
        ("stand", ["stand", "walk", "jump"]), ("run", ["run"]), ("hop", ["hop"])]
    # An imported table is its task's own, whatever its spec says.
    imported = {"walk": pa.table({"x": [1]})}
    assert [names for _, names in same_data_groups(datasets, imported)] == [
        ["stand", "jump"], ["walk"], ["run"], ["hop"]]
