"""`psec submit` reaches the `psec serve` of *its* store or says in one line that none
serves it; it never hands a spec to whatever Ray instance runs on the machine. Serve
records of killed servers are recognised and cleaned, by pid before Ray and by lease on
Ray (the last test SIGKILLs a real `psec serve`).

A submission whose serve died mid-run is resumed by the next serve, like a stream run
again: what the dead driver stored from the same spec is kept (bit for bit), the rest is
fitted and evaluated, and the task keeps its place — and so its seeds — in the served
stream. Items stored under its names from another spec still fail it; a new submission
bringing names the store holds is refused at submit time."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from pipeline_builders import put_datasets, register_base, snapshot, tiny_task

from library.errors import StoreError
from library.store import SkillStore
from pipeline import inbox as inbox_module
from pipeline import serving
from pipeline.checks import check_plan
from pipeline.cli import main
from pipeline.driver import DriverOptions
from pipeline.inbox import (
    ServeRecord,
    is_stale,
    new_record,
    serve_records,
    write_record,
)
from pipeline.results import ResultRow
from pipeline.serving import plan_submission, serve
from tasks.spec import dump, parse_task

torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A store with the dataset and untrained base of `stand` and the dataset of `walk`;
    no RAY_ADDRESS, so `psec submit` has only the store to find a server by."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    uri = str(tmp_path / "store")
    walk = tiny_task("walk", base="stand")
    put_datasets(uri, [tiny_task("stand", role="base"), walk])
    register_base(uri, "stand", "stand-data")
    (tmp_path / "walk.yaml").write_text(yaml.safe_dump(walk))
    return SkillStore(uri)


def submit_error(capsys, argv, *needles):
    """`psec submit` in-process: exit 2, one stderr line holding every needle."""
    code = main(["submit", *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("psec: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def killed_pid() -> int:
    """The pid of a process that was SIGKILLed (and reaped)."""
    process = subprocess.Popen(["sleep", "60"])
    process.send_signal(signal.SIGKILL)
    process.wait()
    return process.pid


@pytest.mark.usefixtures("no_ray")
def test_without_a_server_submit_fails_in_one_line_and_touches_no_ray(tmp_path, store, capsys):
    before = snapshot(store.local_path)
    submit_error(capsys, [str(tmp_path / "walk.yaml"), "--store", store.uri],
                 f"no psec serve is serving the store at {store.uri}", "nothing was queued",
                 f"start one with `psec serve --store {store.uri}`")
    assert snapshot(store.local_path) == before


@pytest.mark.usefixtures("no_ray")
def test_a_sigkilled_servers_record_is_cleaned_and_does_not_fool_submit(tmp_path, store,
                                                                         capsys):
    record = new_record("0" * 32, "127.0.0.1:1").model_copy(update={"pid": killed_pid()})
    write_record(store, record)
    assert is_stale(record)
    before = snapshot(store.local_path)
    submit_error(capsys, [str(tmp_path / "walk.yaml"), "--store", store.uri],
                 "no psec serve is serving the store at", "nothing was queued")
    # Only the stale record went; everything stored is as it was.
    record_file = os.path.join(store.local_path, "serving", f"{record.token}.json")
    assert snapshot(store.local_path) == {k: v for k, v in before.items() if k != record_file}
    assert record_file in before and serve_records(store) == []


def test_a_killed_process_that_nobody_reaped_yet_counts_as_gone():
    process = subprocess.Popen(["sleep", "60"])
    record = new_record("1" * 32, "127.0.0.1:1").model_copy(update={"pid": process.pid})
    assert not is_stale(record)
    process.send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not is_stale(record) and time.monotonic() < deadline:  # a zombie until reaped
        time.sleep(0.05)
    assert is_stale(record)
    process.wait()


def test_records_of_other_machines_are_not_judged_by_pid(store):
    elsewhere = ServeRecord(token="2" * 32, address="10.0.0.9:6379", host="node-7",
                            process_space="node-7/pidns:1", pid=killed_pid(),
                            started="2026-11-21T10:00:00+00:00")
    write_record(store, elsewhere)
    # Its pid means nothing here: only its lease in the inbox (on Ray) can tell.
    assert serve_records(store) == [elsewhere]


@pytest.mark.usefixtures("no_ray")
def test_submit_goes_to_the_recorded_servers_ray_and_nowhere_else(tmp_path, store, capsys):
    # A live server (this process) recorded on a Ray address where nothing listens: submit
    # dials that address — not "auto" — and keeps the record, whose serve may be alive.
    write_record(store, new_record("3" * 32, "127.0.0.1:1"))
    submit_error(capsys, [str(tmp_path / "walk.yaml"), "--store", store.uri],
                 f"the psec serve recorded for it (pid {os.getpid()} on ",
                 "cannot reach a Ray cluster at '127.0.0.1:1'")
    assert [r.token for r in serve_records(store)] == ["3" * 32]


@pytest.mark.usefixtures("no_ray")
def test_submit_wait_gives_a_server_time_to_start(tmp_path, store, capsys, monkeypatch):
    monkeypatch.setattr(serving, "SERVER_WAIT_S", 1.0)
    started = time.monotonic()
    submit_error(capsys, [str(tmp_path / "walk.yaml"), "--store", store.uri, "--wait"],
                 "no psec serve is serving the store at", "nothing was queued")
    assert time.monotonic() - started >= 1.0


@pytest.mark.slow  # Ray and a `psec serve` process start in 20-60 s on 2 busy cores
def test_a_sigkilled_psec_serve_stops_counting(ray_cluster, tmp_path, store, capsys):
    import ray

    from pipeline.inbox import inbox_actor

    address = ray.get_runtime_context().gcs_address
    inbox = inbox_actor(store.uri, lease_s=6.0)  # made here, so the server joins this one
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--store", store.uri, "--address", address,
         "--poll", "0.5"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while not (records := serve_records(store)) and time.monotonic() < deadline:
        assert server.poll() is None, "psec serve exited"
        time.sleep(0.5)
    assert [r.pid for r in records] == [server.pid] and records[0].address == address
    assert ray.get(inbox.serving.remote()) == 1
    token = records[0].token

    server.send_signal(signal.SIGKILL)
    server.wait()
    spec = str(tmp_path / "walk.yaml")
    # Its record is still in the store and its lease still in the inbox; neither fools the
    # next submit: the record names a dead pid on this machine.
    submit_error(capsys, [spec, "--store", store.uri],
                 "no psec serve is serving the store at", "nothing was queued")
    assert serve_records(store) == []
    # The inbox stops counting it once its lease lapses.
    deadline = time.monotonic() + 30
    while ray.get(inbox.serving.remote()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.get(inbox.serving.remote()) == 0
    # Had it run on another node, its pid would prove nothing: the lapsed lease does.
    write_record(store, records[0].model_copy(update={"process_space": "node-7/pidns:1"}))
    submit_error(capsys, [spec, "--store", store.uri], f"on Ray at {address} has stopped")
    assert serve_records(store) == []
    # Named explicitly, the cluster's inbox keeps the spec for the next server.
    assert main(["submit", spec, "--store", store.uri, "--address", address]) == 0
    assert "no psec serve is running for this store" in capsys.readouterr().out
    assert ray.get(inbox.pending.remote()) == 1 and ray.get(inbox.serves.remote(token)) is False
    ray.kill(inbox)


# ------------------------------------------------- resuming a submission


def walk_spec(steps=20):
    """A skill `walk` on base `stand` with one composer `s2w` (base + walk)."""
    return tiny_task("walk", base="stand", steps=steps,
                     composers=[{"name": "s2w", "skills": ["base"]}])


def store_skill_as_a_driver_would(store, spec):
    """What a driver running `spec` (not yet finished) leaves behind: its skill, stored
    with the task spec its plan carries, and no composer or results yet."""
    from library_builders import add_trained_looking_skill

    from library.serialization import dump_skill, load_base

    plan = plan_submission(parse_task(spec), store)
    policy = load_base(*store.load("stand"))
    add_trained_looking_skill(policy, spec["name"], seed=5)
    store.register(spec["name"], "skill",
                   *dump_skill(policy, spec["name"], base_name="stand"), parent="stand",
                   task_spec=dump(plan.tasks[0].task))


def served_row(task, position, name):
    """A result row of the served stream, as a driver records it after `task`'s fit."""
    return ResultRow(stream="served", task=task, position=position, name=name, kind="skill",
                     method="skill", composer=None, skills=[name], seed=0, eval_task=task,
                     episodes=1, return_mean=0.0, return_std=0.0, score=0.0, success=0.0,
                     cost=0.0, steps=20, wall_s=0.0, scale="as-written",
                     time="2026-11-21T00:00:00+00:00").model_dump(mode="json")


def seeds(plan):
    """Every stage's seed, by stage name."""
    return {stage.name: stage.seed for unit in plan.units.values() for stage in unit.stages}


def test_a_retry_keeps_its_place_in_the_served_stream(store):
    task = parse_task(walk_spec())
    store.append_results([served_row("stand2", 0, "stand2"), served_row("hop", 1, "hop")])
    first = plan_submission(task, store)
    assert first.tasks[0].position == 2
    # The driver running `walk` stored its skill, recorded the skill's rows, then died.
    store_skill_as_a_driver_would(store, walk_spec())
    store.append_results([served_row("walk", 2, "walk")])
    resumed = plan_submission(task, store, retried=True)
    assert resumed.tasks[0].position == 2
    assert seeds(resumed) == seeds(first)
    # A task served after it while it waited does not move it either.
    store.append_results([served_row("run", 3, "run")])
    assert plan_submission(task, store, retried=True).tasks[0].position == 2
    # Without rows of its own (it died before evaluating), it comes after the others.
    assert plan_submission(task.model_copy(update={"name": "jump"}), store,
                           retried=True).tasks[0].position == 4


def test_a_retry_refuses_items_of_another_spec_or_of_no_driver(store):
    # Stored by a driver from a spec with other steps: check_plan's one-line refusal.
    store_skill_as_a_driver_would(store, walk_spec(steps=30))
    task = parse_task(walk_spec())
    with pytest.raises(StoreError, match="already in the store: a submitted task must bring"):
        plan_submission(task, store)
    with pytest.raises(StoreError, match=r"^'walk' is in the store from a different spec of "
                                         r"task 'walk' \(another scale"):
        check_plan(plan_submission(task, store, retried=True), store)
    # Registered by hand (no task spec): no driver of this submission stored it.
    store.remove("walk")
    from library_builders import add_trained_looking_skill

    from library.serialization import dump_skill, load_base

    policy = load_base(*store.load("stand"))
    add_trained_looking_skill(policy, "walk", seed=5)
    store.register("walk", "skill", *dump_skill(policy, "walk", base_name="stand"),
                   parent="stand")
    with pytest.raises(StoreError, match=r"^'walk' already in the store: a submitted task"):
        plan_submission(task, store, retried=True)


def test_serve_resumes_a_submission_whose_driver_died(ray_cluster, store, monkeypatch):
    import ray

    # A short lease (renewed often enough by the live serve) so the dead one lapses fast.
    monkeypatch.setattr(inbox_module, "HEARTBEAT_S", 0.2)
    inbox = inbox_module.inbox_actor(store.uri, lease_s=2.0)
    walk_id = ray.get(inbox.put.remote(walk_spec()))
    # A second submission whose name holds a skill of another spec of it.
    run = tiny_task("run", base="stand", steps=20, data={"source": "store",
                                                       "dataset": "walk-data"})
    run_id = ray.get(inbox.put.remote(run))
    # Two drivers took them, stored the skills and were SIGKILLed: no beats, no finish.
    for _ in range(2):
        assert ray.get(inbox.take.remote(ray.get(inbox.attach.remote()))) is not None
    store_skill_as_a_driver_would(store, walk_spec())
    store_skill_as_a_driver_would(store, {**run, "train": {"steps": 30, "batch_size": 32}})
    kept = {path: stat for path, stat in snapshot(store.local_path).items()
            if os.sep + os.path.join("items", "walk") + os.sep in path}
    walk_entry = store.entry("walk")
    deadline = time.monotonic() + 30
    while ray.get(inbox.get.remote(walk_id)).status != "pending":
        assert time.monotonic() < deadline
        time.sleep(0.2)

    served = serve(store.uri, max_tasks=2, poll=0.2, options=DriverOptions(progress=False))

    assert served == 2
    done = ray.get(inbox.get.remote(walk_id))
    assert done.status == "done" and done.attempts == 2, done.message
    assert done.message.startswith("fitted s2w; kept walk;"), done.message
    assert store.exists("s2w") and store.entry("s2w").parent == "stand"
    # The dead driver's skill is as it left it: same files, same checksum, same entry.
    assert {path: stat for path, stat in snapshot(store.local_path).items()
            if path in kept} == kept and len(kept) == 2
    entry = store.entry("walk")
    assert (entry.sha256, entry.created, entry.task_spec) == \
        (walk_entry.sha256, walk_entry.created, walk_entry.task_spec)
    rows = store.results().to_pylist()
    assert {(r["name"], r["position"]) for r in rows} == {("walk", 0), ("s2w", 0)}
    failed = ray.get(inbox.get.remote(run_id))
    assert failed.status == "failed" and failed.attempts == 2
    assert failed.message.startswith("'run' is in the store from a different spec of task 'run'")
    ray.kill(inbox)


@pytest.mark.usefixtures("no_ray")
def test_a_new_submission_with_a_stored_name_is_refused_at_submit(tmp_path, store, capsys):
    # Even stored from the very same spec: a new submission must bring new names.
    store_skill_as_a_driver_would(store, tiny_task("walk", base="stand"))
    before = snapshot(store.local_path)
    submit_error(capsys, [str(tmp_path / "walk.yaml"), "--store", store.uri],
                 "'walk' already in the store: a submitted task must bring new names")
    assert snapshot(store.local_path) == before
