"""benchmarks/pipeline.py at --quick sizes: it runs and prints its JSON lines."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_pipeline_benchmark_prints_its_figures():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", "--json", "--quick",
         "--only", "skill_registered"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    metrics = {line["metric"] for line in lines}
    assert metrics == {"skill_registered_s", "stage_wall_s"}
    stages = {line["stage"]: line["value"] for line in lines if line["metric"] == "stage_wall_s"}
    assert {"dataset", "trainer_start", "train", "trainer_stop", "evaluation"} <= set(stages)
    total = next(line["value"] for line in lines if line["metric"] == "skill_registered_s")
    assert 0 < stages["train"] < total
