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
    # No venv on PATH (as in a shell where it is not activated): the script finds its tools
    # through PSEC_VENV, here the venv running the tests.
    venv_bin = os.path.dirname(sys.executable)
    path = [d for d in os.environ["PATH"].split(os.pathsep) if os.path.abspath(d) != venv_bin]
    env = {**os.environ, "PATH": os.pathsep.join(path),
           "PSEC_VENV": os.path.dirname(venv_bin)}
    env.pop("RAY_ADDRESS", None)
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["bash", SCRIPT, stream, store_uri], env=env, capture_output=True,
                            text=True, timeout=500)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "succeeded" in output and "fitted 1 (stand)" in output, output[-4000:]
    store = SkillStore(store_uri)
    assert store.entry("stand").kind == "base" and store.results().num_rows == 1
