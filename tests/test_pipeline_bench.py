"""benchmarks/pipeline.py at --quick sizes: it runs and prints its JSON lines.

One run prints all three measurements (one Ray instance, one base, one walk dataset, as a
user's run does); each test reads its own lines from it.
"""

import json
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def printed() -> list[dict]:
    """`python -m benchmarks.pipeline --json --quick`: its JSON lines."""
    result = subprocess.run([sys.executable, "-m", "benchmarks.pipeline", "--json", "--quick"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def lines_of(printed: list[dict], *metrics: str) -> list[dict]:
    return [line for line in printed if line["metric"] in metrics]


@pytest.mark.slow
def test_the_pipeline_benchmark_prints_its_figures(printed):
    lines = lines_of(printed, "skill_registered_s", "stage_wall_s")
    metrics = {line["metric"] for line in lines}
    assert metrics == {"skill_registered_s", "stage_wall_s"}
    stages = {line["stage"]: line["value"] for line in lines if line["metric"] == "stage_wall_s"}
    assert {"dataset", "trainer_start", "train", "trainer_stop", "evaluation"} <= set(stages)
    total = next(line["value"] for line in lines if line["metric"] == "skill_registered_s")
    assert 0 < stages["train"] < total


@pytest.mark.slow
def test_train_contention_compares_one_training_with_two_at_once(printed):
    [line] = lines_of(printed, "train_contention")
    assert line["metric"] == "train_contention" and line["steps"] == 100
    assert line["train_s_alone"] > 0 and line["train_s_pair"] > 0
    # The seconds are printed to 0.1 s and the quick trainings last about a second.
    assert line["value"] == pytest.approx(line["train_s_pair"] / line["train_s_alone"], rel=0.1)
    assert line["ceiling"] == pytest.approx(2 / line["value"], rel=0.01)


@pytest.mark.slow
def test_parallel_speedup_prints_both_pairs_and_how_fits_ran(printed):
    [line] = lines_of(printed, "parallel_speedup")
    assert line["metric"] == "parallel_speedup" and line["single_worker"] == "task"
    assert line["value"] == pytest.approx(line["sequential_s"] / line["concurrent_s"], rel=0.05)
    assert 0 < line["train_s_sequential"] < line["sequential_s"]
