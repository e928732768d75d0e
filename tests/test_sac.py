"""SAC: finite updates, bit-exact resume from a checkpoint, expert export and lookup."""

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from library.errors import DataError, SpecError
from tasks.generators import experts
from tasks.generators.sac import SAC, Actor, ReplayBuffer, RunDir, SACConfig, train

torch.set_num_threads(1)

# A run of a few seconds: 20-step episodes, tiny networks, tiny batches.
TINY = dict(env="walker-stand", horizon=20, hidden=16, batch_size=8, learning_starts=40,
            eval_every=40, eval_episodes=1, checkpoint_every=40, buffer_size=1000)


def quiet(_message: str) -> None:
    pass


def test_update_gives_finite_losses_and_changes_the_actor():
    config = SACConfig(**{**TINY, "steps": 100})
    agent = SAC(24, 6, config)
    buffer = ReplayBuffer(24, 6, 64)
    rng = np.random.default_rng(0)
    for _ in range(64):
        buffer.add(obs=rng.normal(size=24), actions=rng.uniform(-1, 1, 6), rewards=1.0, costs=0.0,
                   next_obs=rng.normal(size=24), terminals=0.0, timeouts=0.0)
    before = [p.clone() for p in agent.actor.parameters()]
    target_before = [p.clone() for p in agent.critic_target.parameters()]
    for _ in range(3):
        losses = agent.update(buffer.sample(8, rng))
    assert set(losses) >= {"critic_loss", "actor_loss", "alpha", "entropy"}
    assert all(math.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.actor.parameters()))
    # Polyak averaging moves the targets, but only by tau per step.
    moved = [(a - b).abs().max().item() for a, b in zip(target_before, agent.critic_target.parameters())]
    assert 0 < max(moved) < 0.01


def test_actor_log_prob_matches_change_of_variables():
    actor = Actor(3, 2, hidden=8)
    obs = torch.randn(4096, 3)
    action, log_prob = actor.sample(obs[:1].expand(4096, 3), torch.Generator().manual_seed(0))
    assert action.abs().max() < 1
    mean, log_std = actor(obs[:1])
    u = torch.atanh(action.clamp(-1 + 1e-6, 1 - 1e-6))
    normal = torch.distributions.Normal(mean, log_std.exp())
    expected = (normal.log_prob(u) - torch.log1p(-action.pow(2) + 1e-12)).sum(-1)
    assert torch.allclose(log_prob, expected, atol=1e-3)


def _final_state(run_dir):
    folder = RunDir(run_dir).latest()
    return torch.load(folder / "agent.pt", weights_only=True), np.load(folder / "replay.npz")


def test_resume_from_checkpoint_is_bit_exact(tmp_path):
    straight = tmp_path / "straight"
    train(SACConfig(**TINY, steps=120), straight, log=quiet)
    resumed = tmp_path / "resumed"
    first = train(SACConfig(**TINY, steps=60), resumed, log=quiet)
    assert first.step == 60 and RunDir(resumed).latest().name == "checkpoint-60"
    second = train(SACConfig(**TINY, steps=120), resumed, log=quiet)
    assert second.step == 120 and second.updates == 120 - TINY["learning_starts"] + 1

    (agent_a, replay_a), (agent_b, replay_b) = _final_state(straight), _final_state(resumed)
    for name in ("actor", "critic", "critic_target"):
        for key, tensor in agent_a[name].items():
            assert torch.equal(tensor, agent_b[name][key]), f"{name}.{key} differs after resume"
    assert torch.equal(agent_a["log_alpha"], agent_b["log_alpha"])
    assert all(np.array_equal(replay_a[k], replay_b[k]) for k in replay_a.files)
    evals = [(tmp_path / d / "eval.jsonl").read_text().splitlines() for d in ("straight", "resumed")]
    assert [json.loads(r)["returns"] for r in evals[0]] == [json.loads(r)["returns"] for r in evals[1]]


def test_a_stopped_run_checkpoints_at_the_episode_end_and_resumes_bit_exact(tmp_path):
    straight = tmp_path / "straight"
    train(SACConfig(**TINY, steps=120), straight, log=quiet)
    stopped = tmp_path / "stopped"
    asked = []
    # Asked at every episode end (20 steps); says stop at the third, between checkpoints.
    first = train(SACConfig(**TINY, steps=120), stopped, log=quiet,
                  should_stop=lambda: asked.append(1) or len(asked) == 3)
    assert first.step == 60 and RunDir(stopped).latest().name == "checkpoint-60"
    second = train(SACConfig(**TINY, steps=120), stopped, log=quiet)
    assert second.step == 120
    (agent_a, replay_a), (agent_b, replay_b) = _final_state(straight), _final_state(stopped)
    for name in ("actor", "critic", "critic_target"):
        for key, tensor in agent_a[name].items():
            assert torch.equal(tensor, agent_b[name][key]), f"{name}.{key} differs after a stop"
    assert all(np.array_equal(replay_a[k], replay_b[k]) for k in replay_a.files)


def test_sigterm_stops_the_cli_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks.generators.sac", *args, "--steps=1000000",
         f"--run-dir={run_dir}", "--no-export"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not (run_dir / "train.jsonl").exists():  # the first episode has ended
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "SIGTERM: stopping at the end of this episode" in output
    checkpoint = RunDir(run_dir).latest()
    assert checkpoint is not None
    assert 0 < int(checkpoint.name.removeprefix("checkpoint-")) < 1_000_000


def test_resume_drops_log_rows_written_after_the_checkpoint(tmp_path):
    train(SACConfig(**TINY, steps=60), tmp_path, log=quiet)
    with (tmp_path / "eval.jsonl").open("a") as f:  # as if killed after an eval at step 80
        f.write(json.dumps({"step": 80, "return_mean": 0.0}) + "\n")
    train(SACConfig(**TINY, steps=80), tmp_path, log=quiet)
    rows = [json.loads(r) for r in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [40, 80]
    assert "returns" in rows[1]  # the real evaluation replaced the stale row


def test_resume_refuses_changed_settings(tmp_path):
    train(SACConfig(**TINY, steps=40), tmp_path, log=quiet)
    with pytest.raises(SpecError, match="^gamma: 0.5 differs"):
        train(SACConfig(**{**TINY, "gamma": 0.5}, steps=60), tmp_path, log=quiet)


def test_bad_config_names_the_field():
    with pytest.raises(SpecError, match="^learning_starts:"):
        SACConfig(**{**TINY, "learning_starts": 2}).validate()
    with pytest.raises(SpecError, match="^env:"):
        SACConfig(env="walker-fly").validate()


def test_export_keeps_the_best_actor_and_loads_it(tmp_path):
    config = SACConfig(**TINY, steps=100)
    good, worse = Actor(24, 6, 16), Actor(24, 6, 16)
    row = {"step": 40, "return_mean": 500.0, "return_std": 1.0, "returns": [500.0]}
    assert experts.export_if_better(good, config, row, tmp_path)
    assert not experts.export_if_better(worse, config, {**row, "return_mean": 400.0}, tmp_path)
    record = experts.read_registry(tmp_path)["walker-stand"]["expert"]
    assert record["return_mean"] == 500.0 and record["steps"] == 40
    assert record["command"].startswith("python -m tasks.generators.sac --env walker-stand")
    loaded = experts.load_actor("walker-stand", directory=tmp_path)
    stored = load_file(tmp_path / "walker-stand.safetensors")
    assert all(torch.equal(stored[k], v) for k, v in good.state_dict().items())
    obs = torch.randn(5, 24)
    assert torch.equal(loaded.act(obs), good.act(obs))


def test_missing_expert_error_names_the_training_command(tmp_path):
    with pytest.raises(DataError) as error:
        experts.load_actor("walker-run", directory=tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "python -m tasks.generators.sac --env walker-run" in message


def test_recorded_command_parses_back_to_the_same_config():
    from tasks.generators.sac import parse_args

    config, args = parse_args(["--env", "SafetyBallRun-v0", "--suite", "bullet_safety",
                               "--cost-penalty", "0.5", "--steps", "1000", "--threads", "2"])
    assert (config.cost_penalty, config.steps, args.threads) == (0.5, 1000, 2)
    again, _ = parse_args(config.command().split()[3:])
    assert again == config
