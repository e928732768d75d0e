"""A node dies mid-stream: a two-node Ray cluster on this machine (a head and a worker node
on loopback, one CPU each, so the two skill fits run one per node), the worker node's
raylet SIGKILLed once both fits have a checkpoint. The worker node also hosts the store
actor. The stream must finish: the lost fit is retried on the head and resumes from its
checkpoint, the store actor starts again there, nothing is lost or fitted twice, and the
run's output says which fit resumed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from pipeline_builders import put_datasets, tiny_task, write_stream

from library.store import SkillStore

VENV_BIN = Path(sys.executable).parent
# Notice a dead node within ~2 s instead of Ray's default ~15 s.
FAST_HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _processes_with(text: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


@pytest.fixture
def two_nodes():
    """(address, worker node id, env) of a head + worker cluster in its own temp dir,
    every process of which is killed afterwards (`ray stop` would stop every Ray here)."""
    temp = tempfile.mkdtemp(prefix="psec-ln-")  # short: Ray's socket paths must stay short
    env = dict(os.environ, RAY_AUTH_MODE="disabled", **FAST_HEALTH)
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    ray = str(VENV_BIN / "ray")
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats",
                        f"--temp-dir={temp}"], env=env, check=True, capture_output=True)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}",
                        "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True)
        yield f"127.0.0.1:{port}", env, temp
    finally:
        for pid in _processes_with(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


_PIN_STORE_ACTOR = """
import sys, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from pipeline.runtime import NAMESPACE
from pipeline.store_actor import StoreActor, actor_name
from library.store import SkillStore
ray.init(address=sys.argv[1], namespace=NAMESPACE, log_to_driver=False)
head = next(n["NodeID"] for n in ray.nodes() if "node:__internal_head__" in n["Resources"])
worker = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
uri = SkillStore(sys.argv[2]).uri
actor = StoreActor.options(name=actor_name(uri), namespace=NAMESPACE, lifetime="detached",
    scheduling_strategy=NodeAffinitySchedulingStrategy(worker, soft=True)).remote(uri)
ray.get(actor.uri.remote())
print(worker)
"""


@pytest.mark.slow
def test_a_stream_survives_losing_the_node_of_a_fit_and_of_the_store_actor(tmp_path, two_nodes):
    address, env, temp = two_nodes
    tasks = [tiny_task("stand", role="base", steps=40),
             tiny_task("walk", steps=1000), tiny_task("run", steps=1000, env="walker-run")]
    store_uri = str(tmp_path / "store")
    put_datasets(store_uri, tasks)
    stream = write_stream(tmp_path / "stream.yaml", tasks, name="lost")
    pinned = subprocess.run([sys.executable, "-c", _PIN_STORE_ACTOR, address, store_uri],
                            env=env, capture_output=True, text=True, check=True)
    worker = pinned.stdout.strip().splitlines()[-1]
    raylet = [pid for pid in _processes_with(f"--node_id={worker}")
              if b"raylet/raylet" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(raylet) == 1, raylet

    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen([str(VENV_BIN / "psec"), "run", stream, "--store", store_uri,
                               "--address", address], stdout=log, stderr=subprocess.STDOUT,
                              env=env)
    checkpoints = Path(store_uri) / "checkpoints"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            units = {p.parent.name for p in checkpoints.glob("*/task-*")}
            if {"lost__walk", "lost__run"} <= units:
                os.kill(raylet[0], signal.SIGKILL)
                break
            time.sleep(0.2)
        else:
            pytest.fail("the fits never had a checkpoint each: "
                        + (tmp_path / "driver.log").read_text()[-2000:])
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    store = SkillStore(store_uri)
    assert sorted(entry.name for entry in store.list()) == ["run", "stand", "walk"]
    resumed = {name: store.entry(name).metrics["resumed_from"] for name in ("walk", "run")}
    # The fit on the lost node went on from its checkpoint on the head, and said so.
    assert max(resumed.values()) > 0, resumed
    lost = max(resumed, key=resumed.get)
    assert f"{lost} resumed from its checkpoint at step {resumed[lost]}" in output
    rows = store.results().to_pylist()
    keys = [(r["task"], r["name"], r["eval_task"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 6  # 3 own + stand twice, walk once after
    assert not list(checkpoints.glob("*/task-*"))  # finished units leave no checkpoints
    assert json.loads((Path(store_uri) / "manifest" / "run.json").read_text())["kind"] == "skill"
