"""scripts/candidate_spread.py: a stored skill's candidates and its critic's Q of them."""

import json

import numpy as np
import pytest
import torch
from script_modules import load_script

from library.critics import CriticConfig, IQLCritics
from library.diffusion import DiffusionPolicy, PolicyConfig
from library.lora import add_skill
from library.serialization import dump_base, dump_critics, dump_skill
from library.store import SkillStore
from tasks.dataset import to_table

candidate_spread = load_script("candidate_spread")

S, A = 3, 2


def _store(tmp_path, with_critics: bool = True) -> str:
    torch.manual_seed(0)
    store = SkillStore(str(tmp_path / "store"))
    policy = DiffusionPolicy(PolicyConfig(obs_dim=S, act_dim=A, hidden=8))
    store.register("stand", "base", *dump_base(policy))
    add_skill(policy, "skill", rank=2)
    config, tensors = dump_skill(policy, "skill", "stand")
    if with_critics:
        iql = IQLCritics(CriticConfig(obs_dim=S, act_dim=A, hidden=8), policy.normalizer)
        config = {**config, "critics": {"iql": iql.config.to_dict()}}
        tensors = {**tensors, **dump_critics(iql, None)}
    store.register("skill", "skill", config, tensors, parent="stand")
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(41, S)).astype(np.float32)
    done = np.zeros(40, dtype=bool)
    store.put_dataset("data", to_table({
        "obs": obs[:-1], "next_obs": obs[1:],
        "actions": rng.uniform(-1, 1, size=(40, A)).astype(np.float32),
        "rewards": rng.normal(size=40).astype(np.float32),
        "terminals": done, "timeouts": np.r_[done[:-1], True]}))
    return store.uri


def test_the_kept_candidate_is_the_one_q_ranks_highest(tmp_path, capsys):
    uri = _store(tmp_path)
    result = candidate_spread.spread(uri, "skill", "data", states=16, candidates=8, seed=0)
    assert result["states"] == 16 and result["candidates"] == 8
    # The kept action is the best of its state's candidates: above a random one's Q, by
    # about the spread Q has within a state.
    assert result["q_kept"] > result["q_one_candidate"]
    assert result["q_range_in_state"] > 0 and result["l2_kept_to_candidate_mean"] >= 0
    assert candidate_spread.main(["--store", uri, "--item", "skill", "--dataset", "data",
                                  "--states", "16", "--candidates", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["q_kept"] == pytest.approx(result["q_kept"], abs=1e-4)


def test_a_skill_without_critics_or_a_base_is_refused_in_one_line(tmp_path):
    uri = _store(tmp_path, with_critics=False)
    with pytest.raises(SystemExit, match="stored no critics"):
        candidate_spread.spread(uri, "skill", "data", states=4, candidates=2, seed=0)
    with pytest.raises(SystemExit, match="is a base, not a skill"):
        candidate_spread.spread(uri, "stand", "data", states=4, candidates=2, seed=0)
