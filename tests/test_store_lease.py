"""Two drivers, one store: while `psec run`, `psec serve` or `psec tune` holds a store, a
second driver on it is refused in one line before it changes anything; a driver that was
killed holds nothing. On a local folder (flock) and on the S3 test server (a lease object
with a heartbeat)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from pipeline_builders import tiny_task, write_stream

from library.errors import StoreError
from library.store import SkillStore
from pipeline import store_lease
from pipeline.store_lease import REMOTE_FOLDER, REMOTE_LEASE, driver_lease

pytest_plugins = ["store_fixtures"]

_HOLD = """
import sys, time
from pipeline.store_lease import driver_lease
with driver_lease(sys.argv[1], "psec run holder.yaml"):
    print("held", flush=True)
    time.sleep(120)
"""


def hold(store_uri: str) -> subprocess.Popen:
    """Another driver process holding `store_uri` (killed by the caller)."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, store_uri], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    line = holder.stdout.readline()
    assert line.strip() == "held", line + holder.stdout.read()
    return holder


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_a_second_psec_run_on_a_held_local_store_is_refused_and_changes_nothing(tmp_path):
    store_uri = str(tmp_path / "store")
    stream = write_stream(tmp_path / "stream.yaml", [tiny_task("stand", role="base", steps=10)],
                          name="second")
    holder = hold(store_uri)
    try:
        with pytest.raises(StoreError, match=r"is in use by another psec driver \(psec run "
                           rf"holder.yaml on .*, pid {holder.pid}, since .*\): wait") as info:
            with driver_lease(store_uri, "psec run other.yaml"):
                pass
        assert "\n" not in str(info.value)
        second = subprocess.run([sys.executable, "-m", "pipeline", "run", str(stream),
                                 "--store", store_uri], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "in use by another psec driver" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1, second.stderr
        store = SkillStore(store_uri)
        assert store.list() == [] and not store.has_dataset("stand")
    finally:
        kill(holder)
    # The kernel dropped the killed driver's lock: the next driver goes ahead at once.
    with driver_lease(store_uri, "psec run other.yaml"):
        pass
    with driver_lease(store_uri, "psec run again.yaml"):  # and it let go on the way out
        pass


def test_the_lease_on_s3_refuses_a_live_driver_and_takes_over_a_dead_one(
        s3_uri: str, monkeypatch):
    monkeypatch.setattr(store_lease, "SETTLE_S", 0.05)
    store = SkillStore(s3_uri)
    holder = hold(s3_uri)
    try:
        with pytest.raises(StoreError, match=f"pid {holder.pid}, since"):
            with driver_lease(s3_uri, "psec tune other.yaml"):
                pass
    finally:
        kill(holder)
    # Killed on this machine: its lease is still there, fresh, but its process is gone.
    assert store.get_file(REMOTE_FOLDER, REMOTE_LEASE) is not None
    with driver_lease(s3_uri, "psec run next.yaml"):
        lease = json.loads(store.get_file(REMOTE_FOLDER, REMOTE_LEASE))
        assert lease["command"] == "psec run next.yaml" and lease["pid"] == os.getpid()
    assert store.get_file(REMOTE_FOLDER, REMOTE_LEASE) is None  # released on the way out

    def other_host(renewed: float) -> None:
        store.put_file(REMOTE_FOLDER, REMOTE_LEASE, json.dumps(
            {"command": "psec serve", "host": f"not-{socket.gethostname()}", "pid": 1,
             "started": "then", "token": "theirs", "renewed": renewed}).encode())

    other_host(time.time())  # another machine's driver, renewing: refused
    with pytest.raises(StoreError, match=r"\(psec serve on not-"):
        with driver_lease(s3_uri, "psec run next.yaml"):
            pass
    other_host(time.time() - store_lease.LEASE_S - 1)  # it stopped renewing: gone
    with driver_lease(s3_uri, "psec run next.yaml"):
        pass


def test_of_two_drivers_writing_the_s3_lease_at_once_only_the_last_goes_on(
        s3_uri: str, monkeypatch):
    store = SkillStore(s3_uri)

    def rival_writes() -> None:  # the rival's write lands while we settle
        store.put_file(REMOTE_FOLDER, REMOTE_LEASE, json.dumps(
            {"command": "psec run rival.yaml", "host": "elsewhere", "pid": 7,
             "started": "now", "token": "rival", "renewed": time.time()}).encode())

    monkeypatch.setattr(store_lease, "_settle", rival_writes)
    with pytest.raises(StoreError, match=r"\(psec run rival.yaml on elsewhere, pid 7"):
        with driver_lease(s3_uri, "psec run mine.yaml"):
            pass
    assert json.loads(store.get_file(REMOTE_FOLDER, REMOTE_LEASE))["token"] == "rival"
