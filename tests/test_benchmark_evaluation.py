"""benchmarks.evaluation runs at --quick scale and prints every figure as a JSON line."""

import json

import pytest

from benchmarks import evaluation


@pytest.mark.slow
def test_quick_run_prints_both_ways_for_both_envs_and_policies(capsys):
    evaluation.main(["--json", "--quick"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rates = {(r["env"], r["policy"], r["how"]): r for r in rows if r["name"] == "eval_env_steps_per_s"}
    for env in ("walker-walk", "reach-v3"):
        for policy in ("base", "psec_k2"):
            alone, together = rates[(env, policy, "one_at_a_time")], rates[(env, policy, "side_by_side")]
            assert together["env_steps"] == evaluation.EPISODES * 5 and together["envs_built"] == 30
            assert alone["env_steps"] == 5
            assert any(r["name"] == "evaluation_speedup" and r["env"] == env
                       and r["policy"] == policy for r in rows)
        assert (env, "base", "env_only") in rates
