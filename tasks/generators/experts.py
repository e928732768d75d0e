"""The committed expert actors: `tasks/experts/<env>[-<kind>].safetensors` + `experts.json`.

`experts.json` maps env -> kind ("expert", "medium") -> a record of how the actor was
made and what it measured. Files are small (an MLP actor), so they live in the
repository and every generator is reproducible without retraining.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from library.errors import ArgumentParser, DataError, exit_status
from tasks.generators.rollouts import record as record_episodes
from tasks.generators.sac import (
    DEFAULT_CACHE,
    Actor,
    RunDir,
    SACConfig,
    default_run_dir,
    read_jsonl,
    save_actor,
)
from tasks.suites import get_suite

EXPERTS_DIR = Path(__file__).resolve().parents[1] / "experts"
REGISTRY = "experts.json"

# Episode-return targets for the experts we train (1000-step DMC episodes).
TARGETS = {"walker-stand": 900.0, "walker-walk": 900.0, "walker-run": 600.0}


def actor_path(env: str, kind: str = "expert", directory: Path = EXPERTS_DIR) -> Path:
    """Where the `kind` actor of `env` is stored."""
    return directory / (f"{env}.safetensors" if kind == "expert" else f"{env}-{kind}.safetensors")


# SAC settings per suite that differ from SACConfig's defaults: Bullet-Safety behaviour
# policies are short runs on 100–500-step episodes.
RECIPES = {
    "dmc": {"steps": 500_000},
    "mujoco": {"steps": 1_000_000},
    "bullet_safety": {"steps": 10_000, "learning_starts": 1_000, "eval_every": 1_000,
                      "checkpoint_every": 5_000},
}


def train_command(env: str, suite: str = "dmc") -> str:
    """The command that trains the expert for `env`."""
    config = SACConfig(env=env, suite=suite, **RECIPES.get(suite, {}))
    return config.command() + " --threads 1"


@contextmanager
def _locked():
    # Two SAC processes may export at once; the lock lives outside the repository.
    lock = DEFAULT_CACHE.parent / "experts.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with lock.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def read_registry(directory: Path = EXPERTS_DIR) -> dict:
    """env -> kind -> record; empty when nothing has been exported."""
    path = directory / REGISTRY
    return json.loads(path.read_text()) if path.exists() else {}


def write_record(env: str, kind: str, record: dict, directory: Path = EXPERTS_DIR) -> None:
    """Set registry[env][kind] = record (atomically; the caller holds the lock)."""
    registry = read_registry(directory)
    registry.setdefault(env, {})[kind] = record
    _write_registry(registry, directory)


def _write_registry(registry: dict, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / REGISTRY
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)  # atomic: readers see the old registry or the new one


def export_actor(actor: Actor, env: str, kind: str, record: dict,
                 directory: Path = EXPERTS_DIR) -> Path:
    """Write the actor and its registry record."""
    path = actor_path(env, kind, directory)
    with _locked():
        save_actor(actor, path, {"env": env, "kind": kind})
        write_record(env, kind, {"file": path.name, **record}, directory)
    return path


def kind_of(config: SACConfig) -> str:
    """"expert" for a plain SAC run, "lambda<λ>" for one trained on r − λ·c."""
    return "expert" if config.cost_penalty == 0 else f"lambda{config.cost_penalty:g}"


def remove_actor(env: str, kind: str, directory: Path = EXPERTS_DIR) -> None:
    """Delete a stored actor and its record (e.g. a behaviour policy that duplicates another)."""
    with _locked():
        registry = read_registry(directory)
        if kind not in registry.get(env, {}):
            raise DataError(f"no {kind} actor for {env!r} in {directory}")
        actor_path(env, kind, directory).unlink(missing_ok=True)
        del registry[env][kind]
        if not registry[env]:
            del registry[env]
        _write_registry(registry, directory)


def export_if_better(actor: Actor, config: SACConfig, row: dict,
                     directory: Path = EXPERTS_DIR) -> bool:
    """Export `actor` as the `kind_of(config)` actor of its env if `row` beats the stored one."""
    kind = kind_of(config)
    with _locked():
        current = read_registry(directory).get(config.env, {}).get(kind)
        objective = row.get("objective_mean", row["return_mean"])
        if current is not None and current.get("objective_mean", current["return_mean"]) >= objective:
            return False
    record = {
        "suite": config.suite,
        "steps": row["step"],
        "return_mean": row["return_mean"],
        "return_std": row["return_std"],
        "episodes": len(row["returns"]),
        "measured": "SAC evaluation during training: deterministic actor, fixed-seed episodes",
        "target": TARGETS.get(config.env),
        "command": config.command() + " --threads 1",
    }
    if config.cost_penalty:
        record.update(cost_penalty=config.cost_penalty, cost_mean=row["cost_mean"],
                      objective_mean=objective)
    export_actor(actor, config.env, kind, record, directory)
    return True


def _read_actor(path: Path) -> Actor:
    with safe_open(str(path), "pt") as f:
        arch = json.loads(f.metadata()["arch"])
    actor = Actor(**arch)
    actor.load_state_dict(load_file(str(path)))
    actor.eval()
    return actor


def load_actor(env: str, kind: str = "expert", directory: Path = EXPERTS_DIR) -> Actor:
    """The stored `kind` actor of `env`; DataError naming the training command if absent."""
    path = actor_path(env, kind, directory)
    if not path.exists():
        hint = (f"train it with `{train_command(env)}`" if kind == "expert" else
                f"train the expert with `{train_command(env)}`, then run "
                f"`python -m tasks.generators.experts export-medium --env {env}`")
        raise DataError(f"no {kind} actor for {env!r} in {directory}: {hint}")
    return _read_actor(path)


def actor_policy(actor: Actor):
    """obs [S] (numpy) -> the deterministic action tanh(mean) [A] (numpy float32)."""

    def policy(obs: np.ndarray) -> np.ndarray:
        return actor.act(torch.as_tensor(obs, dtype=torch.float32)[None])[0].numpy()

    return policy


# ---------------------------------------------------------------------------------------
# Medium policy and medium-replay data, picked from a finished (or running) SAC run

MEDIUM_BAND = (1 / 3, 1 / 2)  # D4RL: a medium policy reaches about a third to half of expert
# Where D4RL's own medium data lie, in the suite's score (D4RL-normalised on mujoco): BC
# trained on halfcheetah-medium and walker2d-medium scores 40.8 and 66.4 (robomimic's D4RL
# table, https://robomimic.github.io/docs/v0.2/datasets/d4rl.html), a BC policy scoring at
# about its data's level. D4RL's Walker2d medium policy is far above a third to half of an
# expert, so on these envs the medium actor is picked at this level instead of by the band
# (docs/EXPERTS.md, "Medium and medium-replay").
MEDIUM_LEVEL = {"HalfCheetah-v5": 40.8, "Walker2d-v5": 66.4}
# An evaluation within this fraction of the level counts as reaching it.
LEVEL_TOLERANCE = 0.1
# Episodes of the replay buffer kept in the repository (1000-step DMC episodes: ~2.4 MB).
MEDIUM_REPLAY_EPISODES = 10


def replay_path(env: str, directory: Path = EXPERTS_DIR) -> Path:
    """Where the medium-replay transitions of `env` are stored."""
    return directory / f"{env}-medium-replay.safetensors"


def _replay_until(run: RunDir, step: int, max_episodes: int
                  ) -> tuple[dict[str, torch.Tensor], list[float], int]:
    """The run's replay buffer up to `step`: every episode, or `max_episodes` of them spread
    evenly over it, as tensors (with episode ids); their returns; the episodes there were."""
    checkpoint = run.latest()
    if checkpoint is None:
        raise DataError(f"{run.path} has no checkpoint holding the replay buffer")
    with np.load(checkpoint / "replay.npz") as f:
        if int(f["added"]) > int(f["size"]):
            raise DataError(f"the replay buffer of {run.path} has wrapped: its first transitions are gone")
        if int(f["added"]) < step:
            raise DataError(f"the latest checkpoint of {run.path} holds {int(f['added'])} "
                            f"transitions, fewer than the {step} up to the medium step: let the "
                            "run go on to its next checkpoint (or stop it with SIGTERM, which "
                            "writes one)")
        replay = {k: f[k][:step] for k in ("obs", "actions", "rewards", "costs", "next_obs",
                                           "terminals", "timeouts")}
    ends = np.flatnonzero(np.logical_or(replay["terminals"], replay["timeouts"]))
    starts = np.r_[0, ends[:-1] + 1]
    keep = np.unique(np.linspace(0, len(ends) - 1, min(max_episodes, len(ends))).round().astype(int))
    rows_kept = np.concatenate([np.arange(starts[i], ends[i] + 1) for i in keep])
    episode = np.concatenate([np.full(ends[i] + 1 - starts[i], n) for n, i in enumerate(keep)])
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v[rows_kept])) for k, v in replay.items()}
    tensors["episode"] = torch.from_numpy(episode.astype(np.int64))
    returns = [float(replay["rewards"][starts[i]: ends[i] + 1].sum()) for i in keep]
    return tensors, returns, int(len(ends))


def export_medium(env: str, suite: str = "dmc", run_dir: Path | None = None,
                  max_episodes: int = MEDIUM_REPLAY_EPISODES, directory: Path = EXPERTS_DIR,
                  step: int | None = None, level: float | None = None) -> dict:
    """Export the run's first actor snapshot whose return reached the medium range as
    `<env>-medium` (D4RL stops training early there), and the replay buffer up to that
    step — every episode, or `max_episodes` of them spread evenly over it — as
    `<env>-medium-replay`. Returns the medium record.

    The medium range is `level` ± LEVEL_TOLERANCE in the suite's score where a level is
    given or MEDIUM_LEVEL has one for `env` (D4RL's own medium data), else MEDIUM_BAND of
    the expert's return. `step` picks that evaluation's snapshot instead, for runs with no
    evaluation inside the range yet; the record then says `in_band: false`.
    """
    scores = get_suite(suite)
    scores.check_env(env)  # an unknown env is not "an expert not trained yet"
    run = RunDir(run_dir or default_run_dir(SACConfig(env=env, suite=suite)))
    expert = read_registry(directory).get(env, {}).get("expert")
    if expert is None:
        raise DataError(f"no expert for {env!r} yet: train it with `{train_command(env, suite)}`")
    reference = expert.get("check", expert)["return_mean"]
    level = MEDIUM_LEVEL.get(env) if level is None else level
    if level is None:
        low, high = (f * reference for f in MEDIUM_BAND)
        wanted = f"1/3..1/2 of the expert's {reference:.0f}"
    else:
        low, high = _returns_at(scores, env, level * (1 - LEVEL_TOLERANCE),
                                level * (1 + LEVEL_TOLERANCE))
        wanted = f"score {level:g} ± {LEVEL_TOLERANCE:.0%}"
    evaluations = read_jsonl(run.eval_log)
    if step is not None:
        rows = [r for r in evaluations if r["step"] == step]
        if not rows:
            raise DataError(f"{run.eval_log} has no evaluation at step {step}")
    else:
        rows = [r for r in evaluations if low <= r["return_mean"] <= high]
        if not rows:
            raise DataError(f"no evaluation of {run.path} has a return in [{low:.0f}, {high:.0f}] "
                            f"({wanted}); pick one with --step")
    row = min(rows, key=lambda r: r["step"])
    tensors, returns, in_buffer = _replay_until(run, row["step"], max_episodes)

    record = {"suite": suite, "steps": row["step"], "return_mean": row["return_mean"],
              "return_std": row["return_std"], "episodes": len(row["returns"]),
              "measured": "SAC evaluation during training: deterministic actor, fixed-seed episodes",
              "expert_return": reference, "expert_fraction": row["return_mean"] / reference,
              "in_band": bool(low <= row["return_mean"] <= high),
              **({} if level is None else {"level": level,
                                           "score": scores.score(env, row["return_mean"])}),
              "command": f"python -m tasks.generators.experts export-medium --env {env}"
              + (f" --suite {suite}" if suite != "dmc" else "")
              + (f" --step {step}" if step is not None else "")
              + (f" --level {level:g}" if level is not None and level != MEDIUM_LEVEL.get(env) else "")
              + (f" --max-episodes {max_episodes}" if max_episodes != MEDIUM_REPLAY_EPISODES else "")}
    replay_record = {"suite": suite, "steps": row["step"], "episodes_in_buffer": in_buffer,
                     "episodes": len(returns), "transitions": int(len(tensors["episode"])),
                     "return_mean": float(np.mean(returns)), "return_min": float(np.min(returns)),
                     "return_max": float(np.max(returns)), "command": record["command"]}
    export_actor(_read_actor(run.path / row["actor"]), env, "medium", record, directory)
    with _locked():
        path = replay_path(env, directory)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, tmp, metadata={"env": env, "steps": str(row["step"])})
        os.replace(tmp, path)
        write_record(env, "medium-replay", {"file": path.name, **replay_record}, directory)
    return record


def _returns_at(suite, env: str, low: float, high: float) -> tuple[float, float]:
    """The episode returns at which `suite` scores `low` and `high` on `env` (a score is an
    increasing affine function of the return)."""
    zero, one = suite.score(env, 0.0), suite.score(env, 1.0)
    return (low - zero) / (one - zero), (high - zero) / (one - zero)


def _display(path: Path) -> str:
    # Recorded commands should run for anyone: the home folder is written as ~.
    path, home = Path(path).resolve(), Path.home().resolve()
    return f"~/{path.relative_to(home)}" if path.is_relative_to(home) else str(path)


def export_snapshot(run_dir: Path, step: int, directory: Path = EXPERTS_DIR) -> dict:
    """Export the evaluation snapshot at `step` of a cost-penalised run as the behaviour
    policy `lambda<λ>-step<step>` — a policy between the ends of the reward–cost frontier
    that training passed through. Returns its record."""
    run = RunDir(run_dir)
    config_file = run.path / "config.json"
    if not config_file.is_file():
        raise DataError(f"{run.path} is not a SAC run folder: it has no config.json")
    config = SACConfig(**json.loads(config_file.read_text()))
    rows = [r for r in read_jsonl(run.eval_log) if r["step"] == step]
    if not rows:
        raise DataError(f"{run.eval_log} has no evaluation at step {step}")
    row = rows[0]
    kind = f"lambda{config.cost_penalty:g}-step{step}"
    record = {"suite": config.suite, "steps": step, "return_mean": row["return_mean"],
              "return_std": row["return_std"], "episodes": len(row["returns"]),
              "cost_penalty": config.cost_penalty, "cost_mean": row["cost_mean"],
              "objective_mean": row["objective_mean"],
              "measured": "SAC evaluation during training: deterministic actor, fixed-seed episodes",
              "command": f"{config.command()} --threads 1 && python -m tasks.generators.experts "
                         f"export-snapshot --run-dir {_display(run.path)} --step {step}"}
    export_actor(_read_actor(run.path / row["actor"]), config.env, kind, record, directory)
    return record


def load_replay(env: str, directory: Path = EXPERTS_DIR) -> dict[str, np.ndarray]:
    """The stored medium-replay transitions of `env` (arrays keyed like a dataset)."""
    path = replay_path(env, directory)
    if not path.exists():
        raise DataError(f"no medium-replay data for {env!r} in {directory}: train the expert with "
                        f"`{train_command(env)}`, then run "
                        f"`python -m tasks.generators.experts export-medium --env {env}`")
    return {k: v.numpy() for k, v in load_file(str(path)).items()}


def measure(env: str, kind: str = "expert", episodes: int = 10, seed: int = 12345,
            directory: Path = EXPERTS_DIR) -> dict:
    """Evaluate a stored actor afresh (deterministic, seeds unlike training's) and record it."""
    registry = read_registry(directory)
    stored = registry.get(env, {}).get(kind)
    if stored is None:
        raise DataError(f"no {kind} actor for {env!r} in {directory}")
    suite = get_suite(stored["suite"])
    rec = record_episodes(suite.make_env(env, seed=seed), suite,
                          actor_policy(load_actor(env, kind, directory)), episodes, seed)
    check = {"episodes": episodes, "seed": seed, "return_mean": float(np.mean(rec.returns)),
             "return_std": float(np.std(rec.returns)), "cost_mean": float(np.mean(rec.episode_costs))}
    with _locked():
        current = read_registry(directory)[env][kind]
        write_record(env, kind, {**current, "check": check}, directory)
    return check


def table(directory: Path = EXPERTS_DIR) -> str:
    """The Markdown table of every stored actor (what docs/EXPERTS.md shows)."""
    lines = ["| env | kind | SAC steps | return (mean ± std, episodes) | fresh check (mean ± std, episodes) "
             "| target | reached | command |", "|" + " --- |" * 8]
    for env, kinds in sorted(read_registry(directory).items()):
        for kind, rec in sorted(kinds.items()):
            if kind == "medium-replay":
                ret = (f"{rec['return_mean']:.1f} (min {rec['return_min']:.1f}, max "
                       f"{rec['return_max']:.1f}; {rec['episodes']} of {rec['episodes_in_buffer']} episodes)")
            else:
                ret = f"{rec['return_mean']:.1f} ± {rec['return_std']:.1f} ({rec['episodes']})"
            check = rec.get("check")
            fresh = (f"{check['return_mean']:.1f} ± {check['return_std']:.1f} ({check['episodes']})"
                     if check else "—")
            if check and rec.get("suite") == "bullet_safety":
                fresh += f", cost {check['cost_mean']:.1f}"
            target = rec.get("target") if kind == "expert" else None
            reached = "—" if target is None else (
                "yes" if (check or rec)["return_mean"] >= target else "no")
            lines.append(f"| {env} | {kind} | {rec['steps']} | {ret} | {fresh} | "
                         f"{target if target is not None else '—'} | {reached} | `{rec['command']}` |")
    return "\n".join(lines)


def curve(env: str, suite: str = "dmc", run_dir: Path | None = None, every: int = 25_000) -> str:
    """Evaluation returns of a run every `every` steps (plus the last), as a Markdown table."""
    run = RunDir(run_dir or default_run_dir(SACConfig(env=env, suite=suite)))
    rows = read_jsonl(run.eval_log)
    if not rows:
        raise DataError(f"no evaluations in {run.eval_log}")
    # Evaluations fall at episode ends, so runs with early terminations (Walker2d) log
    # steps like 20065: take the first evaluation at or after each multiple of `every`.
    picked, threshold = [], 0
    for r in rows:
        if r["step"] >= threshold or r is rows[-1]:
            picked.append(r)
            threshold = (r["step"] // every + 1) * every
    lines = [f"| {env} step | eval return (mean ± std) |", "| --- | --- |"]
    lines += [f"| {r['step']} | {r['return_mean']:.1f} ± {r['return_std']:.1f} |" for r in picked]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m tasks.generators.experts",
                            description="Manage the committed expert actors.")
    commands = parser.add_subparsers(dest="command", required=True)
    medium = commands.add_parser("export-medium", help="export the medium actor and medium-replay data")
    medium.add_argument("--env", required=True)
    medium.add_argument("--suite", default="dmc")
    medium.add_argument("--run-dir", type=Path, default=None)
    medium.add_argument("--max-episodes", type=int, default=MEDIUM_REPLAY_EPISODES)
    medium.add_argument("--step", type=int, default=None,
                        help="use this evaluation's snapshot (when none lies in the range yet)")
    medium.add_argument("--level", type=float, default=None,
                        help="pick the first snapshot at this score ± 10%% (default: D4RL's "
                        "medium level where known, else 1/3..1/2 of the expert's return)")
    check = commands.add_parser("measure", help="evaluate a stored actor and record the result")
    check.add_argument("--env", required=True)
    check.add_argument("--kind", default="expert")
    check.add_argument("--episodes", type=int, default=10)
    snapshot = commands.add_parser("export-snapshot",
                                   help="export a cost-penalised run's snapshot as a behaviour policy")
    snapshot.add_argument("--run-dir", type=Path, required=True)
    snapshot.add_argument("--step", type=int, required=True)
    drop = commands.add_parser("remove", help="delete a stored actor and its record")
    drop.add_argument("--env", required=True)
    drop.add_argument("--kind", required=True)
    commands.add_parser("table", help="print the Markdown table of stored actors")
    learning = commands.add_parser("curve", help="print a run's evaluation returns")
    learning.add_argument("--env", required=True)
    learning.add_argument("--suite", default="dmc")
    learning.add_argument("--run-dir", type=Path, default=None)
    learning.add_argument("--every", type=int, default=25_000)

    def run() -> None:
        # Parsed inside exit_status: a bad command line is a user error like any other.
        args = parser.parse_args(argv)
        if args.command == "export-medium":
            print(json.dumps(export_medium(args.env, args.suite, args.run_dir, args.max_episodes,
                                           step=args.step, level=args.level), indent=1))
        elif args.command == "measure":
            print(json.dumps(measure(args.env, args.kind, args.episodes), indent=1))
        elif args.command == "export-snapshot":
            print(json.dumps(export_snapshot(args.run_dir, args.step), indent=1))
        elif args.command == "remove":
            remove_actor(args.env, args.kind)
        elif args.command == "table":
            print(table())
        else:
            print(curve(args.env, args.suite, args.run_dir, args.every))

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
