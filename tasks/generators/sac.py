"""Soft Actor-Critic from state, resumable: the expert trainer behind our generated data.

One file in the CleanRL manner — networks, replay buffer, update and loop — with what a
run of hours on shared CPUs needs on top: a checkpoint (networks, optimisers, temperature,
counters, every RNG state and the replay buffer) written every `checkpoint_every` steps,
and at the episode end after a SIGTERM or Ctrl-C, to a folder outside the repository, from
which a stopped or killed run continues exactly where it stopped; an evaluation log; an
actor snapshot per evaluation (the medium policy is picked from these later); and export
of the best actor to `tasks/experts/`.

    python -m tasks.generators.sac --env walker-stand --steps 500000 --threads 1

Algorithm (Haarnoja et al. 2018, v2): tanh-Gaussian actor, twin Q with target networks
updated by Polyak averaging, temperature tuned to a target entropy of -act_dim, one
gradient step per environment step after `learning_starts` uniformly random steps.

All periodic work (evaluation, checkpoint, the stop test) happens at episode boundaries:
an environment mid-episode cannot be saved generically, and at a boundary nothing but our
own state has to be. Episodes are reset with seeds derived from (seed, episode index), so
a resumed run meets the same initial states as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import save_file

from library.errors import SpecError
from tasks.generators.sac_agent import (  # noqa: F401  (Actor, SAC: this module's API too)
    BUFFER_FIELDS,
    SAC,
    Actor,
    ReplayBuffer,
)
from tasks.suites import get_suite

DEFAULT_CACHE = Path(os.environ.get("PSEC_CACHE", Path.home() / ".cache" / "psec")) / "sac"


@dataclass
class SACConfig:
    """Everything that defines one SAC run; saved as `config.json` in the run folder."""

    env: str = "walker-stand"
    """Environment name within `suite`, e.g. "walker-stand"."""
    suite: str = "dmc"
    """Suite that builds the environment ("dmc", or any suite in tasks.suites)."""
    steps: int = 500_000
    """Environment steps to train for (may be raised when resuming)."""
    seed: int = 0
    """Seeds network init, exploration, replay sampling and episode initial states."""
    horizon: int | None = None
    """Episode length override; None keeps the suite's default."""
    cost_penalty: float = 0.0
    """λ in the training reward r − λ·c (safe-RL suites report the cost c in info["cost"])."""
    hidden: int = 256
    """Width of every hidden layer of actor and critics."""
    layers: int = 2
    """Hidden layers of actor and critics."""
    batch_size: int = 256
    """Transitions per gradient step."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak factor of the target critics."""
    actor_lr: float = 3e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of log(temperature)."""
    init_alpha: float = 0.1
    """Initial temperature; 0.1 suits DMC's per-step rewards in [0, 1]."""
    learning_starts: int = 5_000
    """Uniformly random environment steps before the first gradient step."""
    buffer_size: int = 1_000_000
    """Replay capacity in transitions."""
    eval_every: int = 5_000
    """Evaluate (and snapshot the actor) every this many steps, at the next episode end."""
    eval_episodes: int = 5
    """Episodes per evaluation, deterministic actor, fixed seeds."""
    checkpoint_every: int = 20_000
    """Write a resumable checkpoint every this many steps, at the next episode end."""

    # Fields a resumed run may change without changing what it learns.
    RESUMABLE_CHANGES = ("steps",)

    def validate(self) -> None:
        """Raise SpecError on a field no run can use."""
        positive = ("steps", "hidden", "layers", "batch_size", "buffer_size", "eval_every",
                    "eval_episodes", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise SpecError(name, f"must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise SpecError("gamma", f"must be in (0, 1], got {self.gamma!r}")
        if not 0.0 < self.tau <= 1.0:
            raise SpecError("tau", f"must be in (0, 1], got {self.tau!r}")
        if self.learning_starts < self.batch_size:
            raise SpecError("learning_starts", f"must be >= batch_size ({self.batch_size})")
        if self.cost_penalty < 0:
            raise SpecError("cost_penalty", f"must be >= 0, got {self.cost_penalty!r}")
        get_suite(self.suite).check_env(self.env)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def command(self) -> str:
        """The command line that (re)trains this run."""
        parts = ["python -m tasks.generators.sac"]
        defaults = SACConfig()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("env", "steps") or value != getattr(defaults, f.name):
                parts.append(f"--{f.name.replace('_', '-')} {value}")
        return " ".join(parts)


def default_run_dir(config: SACConfig) -> Path:
    """`~/.cache/psec/sac/<env>/` — plus the seed and λ when they differ from 0."""
    name = config.env
    if config.seed:
        name += f"__seed{config.seed}"
    if config.cost_penalty:
        name += f"__lambda{config.cost_penalty:g}"
    return DEFAULT_CACHE / name


# ---------------------------------------------------------------------------------------
# Run folder: checkpoint, logs, snapshots


def episode_seed(seed: int, stream: int, index: int) -> int:
    """A reset seed for episode `index` of `stream` (0 = training, 1 = evaluation)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1)[0])


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSON-lines log; an absent file has none."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_jsonl(path: Path, max_step: int) -> None:
    # Rows logged after the checkpoint we resume from are about to be produced again.
    rows = [r for r in read_jsonl(path) if r["step"] <= max_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


@dataclass
class Progress:
    """Counters that, with the agent, the buffer and the RNGs, make a run resumable."""

    step: int = 0
    """Environment steps taken."""
    episode: int = 0
    """Episodes finished."""
    updates: int = 0
    """Gradient steps taken."""
    next_eval: int = 0
    """Step at or after which the next evaluation runs."""
    next_checkpoint: int = 0
    """Step at or after which the next checkpoint is written."""
    best_return: float = -math.inf
    """Best mean evaluation objective (return of r − λ·c) so far."""
    rng_state: dict = field(default_factory=dict)
    """State of the numpy generator (warm-up actions, replay sampling)."""


class RunDir:
    """The folder of one run: config.json, latest.json -> checkpoint-<step>/, logs, actors/."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.eval_log = self.path / "eval.jsonl"
        self.train_log = self.path / "train.jsonl"

    def latest(self) -> Path | None:
        """The checkpoint folder named by latest.json, or None for a fresh run."""
        pointer = self.path / "latest.json"
        if not pointer.exists():
            return None
        return self.path / json.loads(pointer.read_text())["checkpoint"]

    def save_checkpoint(self, agent: SAC, buffer: ReplayBuffer, progress: Progress) -> Path:
        previous = self.latest()
        name = f"checkpoint-{progress.step}"
        tmp = self.path / ".checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(agent.state_dict(), tmp / "agent.pt")
        buffer.save(tmp / "replay.npz")
        _write_json(tmp / "progress.json", dataclasses.asdict(progress))
        final = self.path / name
        if final.exists():  # a run killed between rename and pointer update
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_json(self.path / "latest.json", {"checkpoint": name, "step": progress.step})
        if previous is not None and previous != final:
            shutil.rmtree(previous, ignore_errors=True)
        return final

    def load_checkpoint(self, agent: SAC, buffer: ReplayBuffer) -> Progress | None:
        folder = self.latest()
        if folder is None:
            return None
        # weights_only: the file holds tensors, numbers and dicts, never pickled objects.
        agent.load_state_dict(torch.load(folder / "agent.pt", weights_only=True))
        buffer.load(folder / "replay.npz")
        progress = Progress(**json.loads((folder / "progress.json").read_text()))
        _truncate_jsonl(self.eval_log, progress.step)
        _truncate_jsonl(self.train_log, progress.step)
        return progress

    def check_config(self, config: SACConfig) -> None:
        """Write config.json for a new run, or refuse to resume a run with other settings."""
        path = self.path / "config.json"
        if path.exists():
            # A field added since the run began counts as having had its default value.
            saved = {**SACConfig().to_dict(), **json.loads(path.read_text())}
            for key, value in config.to_dict().items():
                if key not in SACConfig.RESUMABLE_CHANGES and saved[key] != value:
                    raise SpecError(
                        key, f"{value!r} differs from {saved[key]!r} of the run in {self.path}; "
                        "use another --run-dir or the same setting")
        self.path.mkdir(parents=True, exist_ok=True)
        _write_json(path, config.to_dict())


# ---------------------------------------------------------------------------------------
# Training loop


def make_env(config: SACConfig, seed: int) -> gym.Env:
    """The environment of `config` built by its suite."""
    return get_suite(config.suite).make_env(config.env, None, seed, config.horizon)


def evaluate(actor: Actor, env: gym.Env, episodes: int, seed: int) -> tuple[list[float], list[float]]:
    """Undiscounted returns and costs of the deterministic actor over seeded episodes."""
    returns, costs = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=episode_seed(seed, 1, i))
        total, cost, done = 0.0, 0.0, False
        while not done:
            action = actor.act(torch.from_numpy(obs)[None])[0].numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            total += reward
            cost += float(info.get("cost", 0.0))
            done = terminated or truncated
        returns.append(total)
        costs.append(cost)
    return returns, costs


def save_actor(actor: Actor, path: Path, metadata: dict | None = None) -> None:
    """Actor weights as safetensors; the architecture and `metadata` go in its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"arch": json.dumps(actor.arch()), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in actor.state_dict().items()}, tmp, metadata=header)
    os.replace(tmp, path)


def _episode(config: SACConfig, env, agent: SAC, buffer: ReplayBuffer,
             rng: np.random.Generator, progress: Progress, run: RunDir) -> dict[str, float]:
    """One episode of acting (uniform actions before `learning_starts`) and one update per
    step after it, logged to the run's train log; the last update's losses ({} if none)."""
    act_dim = env.action_space.shape[0]
    losses: dict[str, float] = {}
    obs, _ = env.reset(seed=episode_seed(config.seed, 0, progress.episode))
    episode_return, episode_cost, done = 0.0, 0.0, False
    while not done:
        if progress.step < config.learning_starts:
            action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = agent.actor.sample(torch.from_numpy(obs)[None], agent.generator)[0][0].numpy()
        next_obs, reward, terminated, truncated, info = env.step(action)
        cost = float(info.get("cost", 0.0))
        buffer.add(obs=obs, actions=action, rewards=reward, costs=cost, next_obs=next_obs,
                   terminals=float(terminated), timeouts=float(truncated))
        obs, done = next_obs, terminated or truncated
        episode_return += reward
        episode_cost += cost
        progress.step += 1
        if progress.step >= config.learning_starts:
            losses = agent.update(buffer.sample(config.batch_size, rng))
            progress.updates += 1
    progress.episode += 1
    _append_jsonl(run.train_log, {"step": progress.step, "episode": progress.episode,
                                  "return": episode_return, "cost": episode_cost})
    return losses


def _evaluate(config: SACConfig, eval_env, agent: SAC, progress: Progress, run: RunDir,
              since: tuple[float, int], losses: dict[str, float], log) -> dict:
    """Evaluate the actor, save it and log the row (the eval log's); schedules the next.
    `since`: (time, updates) when this call of `train` started, for the update rate."""
    returns, costs = evaluate(agent.actor, eval_env, config.eval_episodes, config.seed)
    updates_per_s = (progress.updates - since[1]) / max(time.time() - since[0], 1e-9)
    # The objective SAC maximises here: the return of r − λ·c.
    objective = float(np.mean(returns) - config.cost_penalty * np.mean(costs))
    row = {"step": progress.step, "return_mean": float(np.mean(returns)),
           "return_std": float(np.std(returns)), "returns": returns,
           "cost_mean": float(np.mean(costs)), "objective_mean": objective,
           "actor": f"actors/step-{progress.step}.safetensors",
           "updates_per_s": updates_per_s, "losses": losses}
    save_actor(agent.actor, run.path / row["actor"], {"step": progress.step})
    _append_jsonl(run.eval_log, row)
    progress.best_return = max(progress.best_return, objective)
    progress.next_eval += config.eval_every
    safety = (f", cost {row['cost_mean']:.1f}, objective {objective:.1f}"
              if config.cost_penalty else "")
    log(f"sac: {config.env} step {progress.step} eval {row['return_mean']:.1f} "
        f"± {row['return_std']:.1f}{safety} (best {progress.best_return:.1f}, "
        f"{row['updates_per_s']:.1f} updates/s)")
    return row


def train(config: SACConfig, run_dir: Path | None = None,
          on_eval: Callable[[SAC, dict], None] | None = None,
          log: Callable[[str], None] = print,
          should_stop: Callable[[], bool] | None = None) -> Progress:
    """Train (or resume) the run in `run_dir` until `config.steps`; returns the final counters.

    `on_eval(agent, row)` is called after every evaluation (the CLI exports experts there).
    `should_stop()` is asked at every episode end; when it says yes the run writes a
    checkpoint there and returns early, and a later call resumes it as if never stopped.
    """
    config.validate()
    run = RunDir(run_dir or default_run_dir(config))
    run.check_config(config)
    env = make_env(config, config.seed)
    eval_env = make_env(config, config.seed + 1)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    agent = SAC(obs_dim, act_dim, config)
    # The capacity never depends on `steps`, which a resumed run may raise; numpy's zeros
    # are allocated lazily, so an unfilled capacity costs no memory.
    buffer = ReplayBuffer(obs_dim, act_dim, config.buffer_size)
    rng = np.random.default_rng(config.seed)

    progress = run.load_checkpoint(agent, buffer)
    if progress is None:
        progress = Progress(next_eval=config.eval_every, next_checkpoint=config.checkpoint_every)
        log(f"sac: new run in {run.path}")
    else:
        rng.bit_generator.state = progress.rng_state
        log(f"sac: resumed {run.path} at step {progress.step}")

    started, updates_at_start = time.time(), progress.updates
    losses: dict[str, float] = {}
    while progress.step < config.steps:
        losses = _episode(config, env, agent, buffer, rng, progress, run) or losses
        if progress.step >= progress.next_eval:
            row = _evaluate(config, eval_env, agent, progress, run, (started, updates_at_start),
                            losses, log)
            if on_eval is not None:
                on_eval(agent, row)

        stopping = should_stop is not None and progress.step < config.steps and should_stop()
        if progress.step >= progress.next_checkpoint or progress.step >= config.steps or stopping:
            if not stopping:
                # A stop's checkpoint leaves the schedule alone (it changes nothing learned).
                progress.next_checkpoint = progress.step + config.checkpoint_every
            progress.rng_state = rng.bit_generator.state
            run.save_checkpoint(agent, buffer, progress)
        if stopping:
            log(f"sac: stopped at step {progress.step}; checkpoint written, the same command "
                "resumes it")
            break
    return progress


def parse_args(argv: list[str] | None = None) -> tuple[SACConfig, argparse.Namespace]:
    from library.errors import ArgumentParser  # a bad command line: one line, exit 2

    parser = ArgumentParser(prog="python -m tasks.generators.sac", description=__doc__.split("\n")[0])
    for f in dataclasses.fields(SACConfig):
        default = f.default
        kind = {"int": int, "float": float, "str": str}.get(type(default).__name__, int)
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default)
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="checkpoint folder (default ~/.cache/psec/sac/<env>/); resumed if present")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--no-export", action="store_true",
                        help="do not export new best actors to tasks/experts/")
    args = parser.parse_args(argv)
    config = SACConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SACConfig)})
    return config, args


def main(argv: list[str] | None = None) -> int:
    from library.errors import exit_status
    from tasks.generators.experts import export_if_better

    def run() -> None:
        config, args = parse_args(argv)
        torch.set_num_threads(args.threads)

        def on_eval(agent: SAC, row: dict) -> None:
            if not args.no_export:
                export_if_better(agent.actor, config, row)

        # SIGTERM or Ctrl-C: finish the episode, checkpoint and exit 0 (a second one kills
        # at once), so a run stopped at any time loses at most one episode.
        stop = threading.Event()

        def request_stop(signum: int, _frame: object) -> None:
            print(f"sac: {signal.Signals(signum).name}: stopping at the end of this episode "
                  "(send it again to kill now)", flush=True)
            stop.set()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        train(config, args.run_dir, on_eval=on_eval, log=lambda m: print(m, flush=True),
              should_stop=stop.is_set)

    return exit_status(run)


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's, so the classes the expert
    # export receives are the same ones tasks.generators.experts imports.
    from tasks.generators.sac import main as canonical_main

    sys.exit(canonical_main())
