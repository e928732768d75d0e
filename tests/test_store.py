"""The skill store on a local folder: what only a local store has. The contract every
backend keeps (round trips, the manifest as commit point, validation, datasets, results) is
tests/test_store_contract.py, run on a local folder and on S3 by the same code."""

import multiprocessing
import os
import pickle
from pathlib import Path

import pytest
import store_workers
import torch
from store_builders import add_base, base_tensors

from library.errors import StoreError
from library.store import SkillStore


def test_concurrent_registrations_from_processes(tmp_path: Path):
    """8 processes register 8 names while 4 more race for one name: exactly one racer wins.
    12 processes already outnumber CI's 2 cores; more only made the test slower."""
    store = SkillStore(str(tmp_path / "store"))
    add_base(store)
    # forkserver, not spawn: children are fresh processes forked from a clean server, never
    # copies of pytest, but the server imports torch once instead of once per process
    # (seconds each on 2 busy cores). Preload library.store, not store_workers: Python
    # 3.11's forkserver does not give its server our sys.path, where tests/ is.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["library.store"])
    writers = 8
    jobs = [(f"skill-{i}", i) for i in range(writers)] + [("shared", 100 + i) for i in range(4)]
    start, results = ctx.Barrier(len(jobs)), ctx.Queue()
    procs = [
        ctx.Process(target=store_workers.register_together, args=(store.uri, n, s, start, results))
        for n, s in jobs
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    assert all(err is None for name, _, err in outcomes if name != "shared")
    racers = [(seed, err) for name, seed, err in outcomes if name == "shared"]
    winners = [seed for seed, err in racers if err is None]
    assert len(winners) == 1, racers
    for _, err in racers:
        assert err is None or "'shared'" in err

    entries = store.list()
    assert sorted(e.name for e in entries) == sorted(
        ["b0", "shared"] + [f"skill-{i}" for i in range(writers)]
    )
    for e in entries:
        store.load(e.name)  # every entry's checksum matches its weights
    # The shared item's files are the winner's, not a loser's written over them.
    config, tensors = store.load("shared")
    assert config["seed"] == winners[0]
    assert torch.equal(
        tensors["net.0.lora_B.weight"],
        store_workers.skill_tensors(winners[0])["net.0.lora_B.weight"],
    )


def test_unwritable_store_fails_check_writable_in_one_line(tmp_path: Path):
    # Tests run as root, which ignores permissions: a regular file where the folder should be.
    blocker = tmp_path / "store"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError) as info:
        SkillStore(str(blocker)).check_writable()
    assert (
        str(info.value) == f"store at {blocker} is not writable: {blocker} is a file, not a folder"
    )

    below = SkillStore(str(blocker / "sub"))
    with pytest.raises(StoreError, match=f"^store at {blocker / 'sub'} is not writable: ") as info:
        below.check_writable()
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="is not writable"):
        below.register("b0", "base", {}, base_tensors())


def test_file_uri_and_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = SkillStore(f"file://{tmp_path}/store")
    assert store.local_path == str(tmp_path / "store")
    add_base(store)
    assert (tmp_path / "store" / "manifest" / "b0.json").is_file()
    assert torch.equal(store.load("b0")[1]["net.0.bias"], base_tensors()["net.0.bias"])

    # A relative path is pinned to an absolute one, so a worker elsewhere finds the same store.
    monkeypatch.chdir(tmp_path)
    relative = SkillStore("store")
    assert relative.uri == str(tmp_path / "store")
    monkeypatch.chdir("/")
    clone = pickle.loads(pickle.dumps(relative))
    assert clone.uri == relative.uri and clone.exists("b0")
    # Tools that open store paths themselves get plain paths on a local store.
    assert relative.uri_of("runs", "x") == os.path.join(tmp_path, "store", "runs", "x")


def test_bad_uri():
    with pytest.raises(StoreError, match="cannot open store at nosuch://x"):
        SkillStore("nosuch://x")
    assert os.path.isabs(SkillStore().uri)
