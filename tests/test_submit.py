"""`psec submit` reaches the `psec serve` of *its* store or says in one line that none
serves it; it never hands a spec to whatever Ray instance runs on the machine. Serve
records of killed servers are recognised and cleaned, by pid before Ray and by lease on
Ray (the last test SIGKILLs a real `psec serve`)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from pipeline_builders import put_datasets, register_base, snapshot, tiny_task

from library.store import SkillStore
from pipeline import driver
from pipeline.cli import main
from pipeline.inbox import (
    ServeRecord,
    is_stale,
    new_record,
    serve_records,
    write_record,
)


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


@pytest.fixture
def no_ray(monkeypatch):
    """`ray.init` reached is a failure: these refusals must come before any Ray instance
    (in particular an unrelated one on this machine) is touched."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was reached")

    monkeypatch.setattr(ray, "init", refuse)


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
    monkeypatch.setattr(driver, "SERVER_WAIT_S", 1.0)
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
