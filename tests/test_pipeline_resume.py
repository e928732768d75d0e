"""A driver killed mid-stream (SIGKILL right after its first registration) loses nothing,
and running the stream again fits nothing twice."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from pipeline_builders import put_datasets, tiny_task, write_stream

from library.store import SkillStore


def psec(*argv, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "pipeline", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)


def fitted_names(output: str) -> list[str]:
    match = re.search(r"fitted \d+(?: \(([^)]*)\))?", output)
    assert match, output
    return match.group(1).split(", ") if match.group(1) else []


@pytest.mark.slow
def test_a_killed_driver_resumes_without_refitting(tmp_path):
    tasks = [tiny_task("stand", role="base", steps=40),
             tiny_task("walk", steps=150, composers=[{"name": "s2w", "skills": ["base"]}]),
             tiny_task("run", steps=150, env="walker-run")]
    store_uri = str(tmp_path / "store")
    put_datasets(store_uri, tasks)
    stream = write_stream(tmp_path / "stream.yaml", tasks, name="killed")
    store = SkillStore(store_uri)

    first = psec("run", stream, "--store", store_uri)
    # Only a guard against a hang: the first item is stored within a minute on a quiet
    # 2-core box, but a box running a search beside the suite took over 240 s.
    deadline = time.monotonic() + 480
    try:
        while not store.list() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        # The whole session: the driver and the Ray instance it started.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = {entry.name: entry.created for entry in store.list()}
    assert "stand" in before, first.stdout.read()
    assert len(before) < 4, "the first run finished before it could be killed"

    second = psec("run", stream, "--store", store_uri)
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output
    refitted = fitted_names(output)

    after = {entry.name: entry for entry in store.list()}
    assert set(after) == {"stand", "walk", "s2w", "run"}
    # Nothing registered before the kill was fitted again, nor re-registered.
    assert not set(refitted) & set(before), (refitted, before)
    assert set(refitted) | set(before) == set(after)
    assert all(after[name].created == created for name, created in before.items())
    # Every evaluation is there exactly once: 4 own + 3 continual (stand twice, walk once).
    rows = store.results().to_pylist()
    keys = [(r["task"], r["name"], r["eval_task"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 7

    # A third run finds everything done: no fit, no evaluation, no Ray.
    third = psec("run", stream, "--store", store_uri)
    output, _ = third.communicate(timeout=120)
    assert third.returncode == 0 and fitted_names(output) == [], output
    assert "0 evaluation(s)" in output


@pytest.fixture(autouse=True)
def _no_ray_address(monkeypatch):
    # The subprocesses must start their own Ray, whatever the caller's environment says.
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
