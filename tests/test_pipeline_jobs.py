"""`ray job submit --working-dir . -- psec run ...` against a local `ray start --head`
started with RAY_AUTH_MODE=disabled, through scripts/job_submit_smoke.sh."""

import os
import subprocess
import sys

import pytest
from pipeline_builders import put_datasets, tiny_task, write_stream

from library.store import SkillStore

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "job_submit_smoke.sh")


@pytest.mark.slow
def test_a_stream_runs_as_a_ray_job(tmp_path):
    tasks = [tiny_task("stand", role="base", steps=20)]
    store_uri = str(tmp_path / "store")
    put_datasets(store_uri, tasks)
    stream = write_stream(tmp_path / "stream.yaml", tasks, name="job")
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    result = subprocess.run(["bash", SCRIPT, stream, store_uri], env=env, capture_output=True,
                            text=True, timeout=500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output and "fitted 1 (stand)" in output, output[-4000:]
    store = SkillStore(store_uri)
    assert store.entry("stand").kind == "base" and store.results().num_rows == 1
