"""benchmarks.core runs at --quick scale and prints every figure as a JSON line."""

import json

import pytest

from benchmarks import core


@pytest.mark.slow
def test_quick_run_prints_all_figures(capsys):
    core.main(["--json", "--quick", "--threads", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    seen = {(row["name"], row["what"], row.get("batch")) for row in rows}
    for what in ("base", "single_skill", "composed_k3", "single_skill_merged"):
        assert ("action_latency_ms", what, 1) in seen and ("action_latency_ms", what, 50) in seen
    for what in ("full", "lora_r8", "composer_k3"):
        assert ("train_steps_per_s", what, 1024) in seen
    ratio = next(row for row in rows if row["name"] == "composed_latency_ratio")
    assert ratio["value"] > 0 and ratio["goal"] == 1.5
    assert all(row["value"] > 0 for row in rows)
