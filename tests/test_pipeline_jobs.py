"""`ray job submit --working-dir . -- psec run ...` against a local `ray start --head`
started with RAY_AUTH_MODE=disabled, through scripts/job_submit_smoke.sh."""

import os
import signal
import subprocess
import sys

import pytest
from pipeline_builders import put_datasets, tiny_task, write_stream

from library.store import SkillStore

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "job_submit_smoke.sh")


def run_in_own_group(command: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """(exit status, stdout + stderr) of `command` in a process group of its own. Past
    `timeout` the whole group gets SIGTERM, then SIGKILL: killing the script alone (as
    `subprocess.run`'s timeout does, with SIGKILL) skips its EXIT trap and leaves the Ray
    head node it started running after the tests."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(process.pid, sig)
                output, _ = process.communicate(timeout=grace)
                break
            except (subprocess.TimeoutExpired, ProcessLookupError):
                output = ""
        pytest.fail(f"{command[1]} ran past {timeout} s; its process group was stopped\n"
                    + (output or "")[-4000:])
    return process.returncode, output


@pytest.mark.slow
def test_a_stream_runs_as_a_ray_job(tmp_path):
    tasks = [tiny_task("stand", role="base", steps=20)]
    store_uri = str(tmp_path / "store")
    put_datasets(store_uri, tasks)
    stream = write_stream(tmp_path / "stream.yaml", tasks, name="job")
    # No venv on PATH (as in a shell where it is not activated): the script finds its tools
    # through PSEC_VENV, here a folder of wrappers around the venv running the tests whose
    # `ray start` fails the first time, as a head node does that misses Ray's startup wait
    # on a busy machine: the script starts it again; and whose first `ray job submit` is
    # cut before the job is created, as the job server does now and then on a busy
    # machine: the script submits it again.
    venv_bin = os.path.dirname(sys.executable)
    tools = tmp_path / "venv" / "bin"
    tools.mkdir(parents=True)
    first = tmp_path / "ray-started-once"
    submitted = tmp_path / "ray-submitted-once"
    wrappers = {name: f'exec "{venv_bin}/{name}" "$@"\n' for name in ("python", "psec")}
    wrappers["ray"] = (f'if [ "$1" = start ] && [ ! -e "{first}" ]; then\n'
                       f'  touch "{first}"; echo "simulated: node timed out" >&2; exit 1\n'
                       f'fi\nif [ "$1 $2" = "job submit" ] && [ ! -e "{submitted}" ]; then\n'
                       f'  touch "{submitted}"; echo "simulated: connection cut" >&2; exit 1\n'
                       f'fi\nexec "{venv_bin}/ray" "$@"\n')
    for name, body in wrappers.items():
        (tools / name).write_text("#!/usr/bin/env bash\n" + body)
        (tools / name).chmod(0o755)
    path = [d for d in os.environ["PATH"].split(os.pathsep) if os.path.abspath(d) != venv_bin]
    env = {**os.environ, "PATH": os.pathsep.join(path), "PSEC_VENV": str(tools.parent)}
    env.pop("RAY_ADDRESS", None)
    env.pop("VIRTUAL_ENV", None)
    returncode, output = run_in_own_group(["bash", SCRIPT, stream, store_uri], env, timeout=500)
    assert returncode == 0, output[-4000:]
    assert "the head node did not start; starting it again" in output, output[-4000:]
    assert "the submission did not reach the job server; submitting again" in output, (
        output[-4000:])
    assert "succeeded" in output and "fitted 1 (stand)" in output, output[-4000:]
    store = SkillStore(store_uri)
    assert store.entry("stand").kind == "base" and store.results().num_rows == 1
