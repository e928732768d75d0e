"""Generators: every policy per suite, reproducibility, medium export, one-line errors."""

import json

import numpy as np
import pytest
import torch

from library.errors import DataError, SpecError
from tasks.dataset import dataset_meta, fingerprint, to_arrays
from tasks.generators import experts, generate
from tasks.generators.generator import behaviour_kinds
from tasks.generators.sac import Actor, SACConfig, train
from tasks.spec import parse_task

torch.set_num_threads(1)

HORIZON = 20
RECORD = {"suite": "dmc", "return_mean": 0.0, "return_std": 0.0, "episodes": 5, "steps": 1,
          "command": "python -m tasks.generators.sac --env walker-stand"}


def task(policy, episodes=2, suite="dmc", env="walker-stand", dynamics=None, horizon=HORIZON,
         **data):
    return parse_task({"name": "t", "suite": suite, "env": env, "role": "base", "horizon": horizon,
                       "dynamics": dynamics or {},
                       "data": {"source": "generate", "policy": policy, "episodes": episodes, **data}})


@pytest.fixture
def actors(tmp_path):
    """An experts folder holding an expert and a medium actor for walker-stand."""
    torch.manual_seed(0)
    for kind in ("expert", "medium"):
        experts.export_actor(Actor(24, 6, hidden=16), "walker-stand", kind, RECORD, tmp_path)
    return tmp_path


@pytest.mark.parametrize("policy", ["expert", "medium", "random", "medium-expert"])
def test_same_seed_same_fingerprint_other_seed_other_data(actors, policy):
    first = generate(task(policy, action_noise=0.1), directory=actors)
    again = generate(task(policy, action_noise=0.1), directory=actors)
    other = generate(task(policy, action_noise=0.1, seed=1), directory=actors)
    assert fingerprint(first) == fingerprint(again) != fingerprint(other)
    arrays = to_arrays(first)
    assert arrays["obs"].shape == (2 * HORIZON, 24) and arrays["actions"].shape == (2 * HORIZON, 6)
    assert np.abs(arrays["actions"]).max() <= 1 and "costs" not in arrays
    assert arrays["timeouts"].sum() == 2 and not arrays["terminals"].any()
    meta = dataset_meta(first)
    assert (meta["suite"], meta["env"], meta["generator"], meta["seed"]) == ("dmc", "walker-stand", policy, 0)
    assert len(meta["episode_returns"]) == 2


def test_expert_data_follows_the_expert_actor(actors):
    arrays = to_arrays(generate(task("expert"), directory=actors))
    actor = experts.load_actor("walker-stand", directory=actors)
    expected = actor.act(torch.tensor(arrays["obs"])).numpy()
    assert np.allclose(arrays["actions"], expected, atol=1e-6)


def test_medium_expert_is_medium_then_expert(actors):
    meta = dataset_meta(generate(task("medium-expert", episodes=3), directory=actors))
    assert meta["episode_policy"] == ["medium", "medium", "expert"]


def test_missing_expert_is_one_line_naming_the_command(tmp_path):
    with pytest.raises(DataError) as error:
        generate(task("expert", env="walker-run"), directory=tmp_path)
    assert "\n" not in str(error.value)
    assert "python -m tasks.generators.sac --env walker-run --steps 500000" in str(error.value)
    with pytest.raises(DataError, match="export-medium --env walker-run"):
        generate(task("medium-replay", env="walker-run"), directory=tmp_path)


def test_unsupported_policy_names_the_field():
    with pytest.raises(SpecError, match=r"^data.policy: suite dmc cannot generate 'scripted'"):
        generate(task("scripted"))


def test_medium_export_and_medium_replay(tmp_path):
    run_dir, store = tmp_path / "run", tmp_path / "experts"
    config = SACConfig(env="walker-stand", horizon=HORIZON, hidden=16, batch_size=8, steps=100,
                       learning_starts=40, eval_every=20, eval_episodes=1, checkpoint_every=100)
    train(config, run_dir, log=lambda message: None)
    # Give the evaluations known returns: with an expert at 100 the band is [33.3, 50], and
    # the first evaluation inside it (step 60) is the medium one, not the later 50 at 100.
    rows = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    for row, value in zip(rows, [10.0, 30.0, 45.0, 60.0, 50.0]):
        row["return_mean"] = value
    (run_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    experts.write_record("walker-stand", "expert", {"suite": "dmc", "return_mean": 100.0}, store)
    record = experts.export_medium("walker-stand", run_dir=run_dir, max_episodes=2, directory=store)
    chosen = rows[2]
    assert record["steps"] == chosen["step"] == 60 and record["return_mean"] == 45.0
    assert record["in_band"] and record["expert_fraction"] == 0.45
    medium = experts.load_actor("walker-stand", "medium", store)
    snapshot = experts._read_actor(run_dir / chosen["actor"])
    assert all(torch.equal(a, b) for a, b in zip(medium.state_dict().values(), snapshot.state_dict().values()))
    replay = experts.read_registry(store)["walker-stand"]["medium-replay"]
    assert (replay["episodes_in_buffer"], replay["episodes"], replay["transitions"]) == (3, 2, 40)

    table = generate(task("medium-replay", episodes=5), directory=store)
    arrays = to_arrays(table)
    assert len(arrays["obs"]) == 40 and list(np.unique(arrays["episode"])) == [0, 1]
    one = to_arrays(generate(task("medium-replay", episodes=1), directory=store))
    assert len(one["obs"]) == HORIZON
    with pytest.raises(SpecError, match="^dynamics:"):
        generate(task("medium-replay", dynamics={"friction": 2.0}), directory=store)


def test_medium_export_needs_an_evaluation_in_the_band_or_a_chosen_step(tmp_path):
    run_dir = tmp_path / "run"
    config = SACConfig(env="walker-stand", horizon=HORIZON, hidden=16, batch_size=8, steps=40,
                       learning_starts=20, eval_every=20, eval_episodes=1, checkpoint_every=40)
    train(config, run_dir, log=lambda message: None)
    experts.write_record("walker-stand", "expert", {"suite": "dmc", "return_mean": 1e6}, tmp_path)
    with pytest.raises(DataError, match="no evaluation of .* has a return in .* pick one with --step"):
        experts.export_medium("walker-stand", run_dir=run_dir, directory=tmp_path)
    with pytest.raises(DataError, match="no evaluation at step 30"):
        experts.export_medium("walker-stand", run_dir=run_dir, directory=tmp_path, step=30)
    record = experts.export_medium("walker-stand", run_dir=run_dir, directory=tmp_path, step=20)
    assert record["steps"] == 20 and not record["in_band"]
    assert record["command"].endswith("export-medium --env walker-stand --step 20")


def test_multi_env_union_and_max_transitions(actors):
    experts.export_actor(Actor(24, 6, hidden=16), "walker-walk", "expert", RECORD, actors)
    table = generate(task("expert", envs=["walker-stand", "walker-walk"]), directory=actors)
    arrays = to_arrays(table)
    assert len(arrays["obs"]) == 4 * HORIZON and list(np.unique(arrays["episode"])) == [0, 1, 2, 3]
    meta = dataset_meta(table)
    assert meta["envs"] == ["walker-stand", "walker-walk"]
    assert set(meta["per_env"]) == {"walker-stand", "walker-walk"}
    assert meta["per_env"]["walker-walk"]["episodes"] == 2
    cut = generate(task("expert", max_transitions=30), directory=actors)
    assert cut.num_rows == 30 and to_arrays(cut)["timeouts"][-1]


def test_metaworld_scripted_records_success():
    # The scripted reach policy needs 40-75 steps; 20 are too few.
    long = generate(task("scripted", episodes=1, suite="metaworld", env="reach-v3", horizon=100))
    short = generate(task("scripted", episodes=1, suite="metaworld", env="reach-v3"))
    assert long.num_rows == 100 and dataset_meta(long)["episode_success"] == [True]
    assert short.num_rows == HORIZON and dataset_meta(short)["success_rate"] == 0.0


def test_bullet_safety_random_has_costs_and_mixture_needs_actors(tmp_path):
    table = generate(task("random", episodes=1, suite="bullet_safety", env="SafetyBallRun-v0"))
    arrays = to_arrays(table)
    assert "costs" in arrays and len(arrays["costs"]) == HORIZON
    assert dataset_meta(table)["cost_mean"] == pytest.approx(float(arrays["costs"].sum()))
    with pytest.raises(DataError, match="--cost-penalty"):
        generate(task("expert", suite="bullet_safety", env="SafetyBallRun-v0"), directory=tmp_path)


def test_bullet_safety_mixture_splits_episodes_over_penalties(tmp_path):
    for penalty in (0.0, 1.0):
        config = SACConfig(env="SafetyBallRun-v0", suite="bullet_safety", cost_penalty=penalty)
        row = {"step": 1, "return_mean": 1.0, "return_std": 0.0, "returns": [1.0],
               "cost_mean": 0.0, "objective_mean": 1.0}
        assert experts.export_if_better(Actor(7, 2, hidden=8), config, row, tmp_path)
    table = generate(task("expert", episodes=3, suite="bullet_safety", env="SafetyBallRun-v0"),
                     directory=tmp_path)
    assert dataset_meta(table)["episode_policy"] == ["expert", "lambda1", "expert"]
    experts.remove_actor("SafetyBallRun-v0", "lambda1", tmp_path)
    assert not (tmp_path / "SafetyBallRun-v0-lambda1.safetensors").exists()
    assert generate_policies(tmp_path) == ["expert", "expert"]
    with pytest.raises(DataError, match="no lambda1 actor"):
        experts.remove_actor("SafetyBallRun-v0", "lambda1", tmp_path)


def generate_policies(directory):
    table = generate(task("expert", episodes=2, suite="bullet_safety", env="SafetyBallRun-v0"),
                     directory=directory)
    return dataset_meta(table)["episode_policy"]


def test_measure_records_a_fresh_check_and_table_shows_it(actors):
    experts.write_record("walker-stand", "expert", {
        "suite": "dmc", "return_mean": 950.0, "return_std": 1.0, "episodes": 5, "steps": 100,
        "target": 900.0, "command": "python -m tasks.generators.sac --env walker-stand"}, actors)
    check = experts.measure("walker-stand", episodes=1, directory=actors)
    assert check["episodes"] == 1 and 0 <= check["return_mean"] <= 1000
    assert experts.read_registry(actors)["walker-stand"]["expert"]["check"] == check
    row = next(line for line in experts.table(actors).splitlines() if "| expert |" in line)
    # The fresh check, not the training-time evaluation, decides whether the target is met.
    assert row.split(" | ")[6] == ("yes" if check["return_mean"] >= 900 else "no")


def test_snapshot_of_a_penalised_run_joins_the_behaviour_mixture(tmp_path):
    run_dir = tmp_path / "run"
    config = SACConfig(env="SafetyBallRun-v0", suite="bullet_safety", cost_penalty=5.0, horizon=10,
                       hidden=8, batch_size=8, steps=20, learning_starts=10, eval_every=10,
                       eval_episodes=1, checkpoint_every=20)
    train(config, run_dir, log=lambda message: None)
    record = experts.export_snapshot(run_dir, 10, tmp_path)
    assert record["cost_penalty"] == 5.0 and record["steps"] == 10
    assert behaviour_kinds("SafetyBallRun-v0", tmp_path) == ["lambda5-step10"]
    with pytest.raises(DataError, match="no evaluation at step 15"):
        experts.export_snapshot(run_dir, 15, tmp_path)


def test_curve_takes_the_first_evaluation_past_each_multiple(tmp_path):
    steps = [5011, 10213, 12000, 15305, 16001]
    (tmp_path / "eval.jsonl").write_text("".join(
        json.dumps({"step": s, "return_mean": float(s), "return_std": 0.0}) + "\n" for s in steps))
    rows = experts.curve("Walker2d-v5", "mujoco", tmp_path, every=5000).splitlines()[2:]
    assert [int(r.split(" | ")[0].strip("| ")) for r in rows] == [5011, 10213, 15305, 16001]
