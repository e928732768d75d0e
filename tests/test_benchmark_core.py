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
    train = {row["what"]: row for row in rows if row["name"] == "train_steps_per_s"}
    # 411k Linear weights: 6·P·1024 ≈ 2.5 GFLOP for the base; a frozen base skips the
    # weight gradients (4·P·B plus the adapters').
    assert train["full"]["step_gflop"] == pytest.approx(2.5, rel=0.05)
    assert 4 / 6 < train["lora_r8"]["step_gflop"] / train["full"]["step_gflop"] < 0.8
    assert {"composer_step_ratio", "composed_latency_ratio"} <= {row["name"] for row in rows}
    weighted = {row["what"]: row for row in rows if "advantage" in row["what"]}
    assert set(weighted) == {"lora_r8 advantage, weights tabled",
                             "lora_r8 advantage, weights per batch"}
    assert all(row["batch"] == 2048 for row in weighted.values())
    assert "weighted_table_speedup" in {row["name"] for row in rows}
    critics = {row["what"]: row for row in rows if row["name"] == "critic_steps_per_s"}
    assert set(critics) == {"iql", "feasibility", "iql+feasibility"}
    # Q twins (30·256 + 256·256 + 256 weights each) and V (24·256 + 256·256 + 256): 6·P·B
    # trained, 2·P·B for the TD target's target twins and V(s'), at batch 2048.
    assert critics["iql"]["step_gflop"] == pytest.approx(8 * 218_880 * 2048 / 1e9, abs=1e-3)
    assert critics["iql+feasibility"]["step_gflop"] == pytest.approx(
        2 * critics["feasibility"]["step_gflop"], abs=1e-3)
    [two] = [row for row in rows if row["name"] == "stacked_fit_steps_per_s"]
    assert two["fits"] == 2 and two["batch"] == 1024
    if two["fraction_of_one_fit"] is not None:  # None: the machine too disturbed to measure
        assert two["aggregate_speedup"] == pytest.approx(2 * two["fraction_of_one_fit"], abs=0.02)


def test_only_the_weighted_figures(capsys):
    core.main(["--json", "--quick", "--threads", "1", "--only", "weighted"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["name"] for row in rows] == ["train_steps_per_s", "train_steps_per_s",
                                             "weighted_table_speedup"]


@pytest.mark.slow
def test_compare_train_times_both_checkouts_and_refuses_a_folder_that_is_none(capsys, tmp_path):
    from pathlib import Path

    from benchmarks import compare_train

    root = Path(__file__).resolve().parents[1]
    compare_train.main([str(root), str(root), "--rounds", "1", "--steps", "3", "--batch", "32",
                        "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["learner"] for row in rows] == ["full", "lora_r8", "composer_k3"]
    for row in rows:
        assert len(row["before"]) == len(row["after"]) == 1 and "speedup" in row
    with pytest.raises(SystemExit, match="not a checkout of this repository"):
        compare_train.main([str(tmp_path), str(root)])


@pytest.mark.parametrize("timings, expected", [
    # (short run, long run) per attempt, in seconds: 100 extra steps in 4 s -> 25 steps/s.
    ([(5.0, 9.0)], 25.0),
    # Disturbed once (the longer run barely longer), then plausible: the retry counts.
    ([(9.0, 9.5), (5.0, 9.0)], 25.0),
    # Never plausible (the longer run shorter, as when other load eased): not a number.
    ([(9.0, 5.0), (9.0, 9.1), (6.0, 6.5)], None),
])
def test_train_rate_keeps_only_a_plausible_difference(monkeypatch, timings, expected):
    clock = iter(t for short, long in timings for t in (0.0, short, 0.0, long))
    monkeypatch.setattr(core, "train", lambda *args, **kwargs: None)
    monkeypatch.setattr(core.time, "perf_counter", lambda: next(clock))
    rate = core.train_rate(lambda: None, None, batch_size=8, steps=100)
    assert (rate != rate) if expected is None else rate == pytest.approx(expected)
