"""The committed expert actors: `tasks/experts/<env>[-<kind>].safetensors` + `experts.json`.

`experts.json` maps env -> kind ("expert", "medium") -> a record of how the actor was
made and what it measured. Files are small (an MLP actor), so they live in the
repository and every generator is reproducible without retraining.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from library.errors import DataError
from tasks.generators.sac import DEFAULT_CACHE, Actor, SACConfig, save_actor

EXPERTS_DIR = Path(__file__).resolve().parents[1] / "experts"
REGISTRY = "experts.json"

# Episode-return targets for the experts we train (1000-step DMC episodes).
TARGETS = {"walker-stand": 900.0, "walker-walk": 900.0, "walker-run": 600.0}


def actor_path(env: str, kind: str = "expert", directory: Path = EXPERTS_DIR) -> Path:
    """Where the `kind` actor of `env` is stored."""
    return directory / (f"{env}.safetensors" if kind == "expert" else f"{env}-{kind}.safetensors")


def train_command(env: str, suite: str = "dmc") -> str:
    """The command that trains the expert for `env`."""
    config = SACConfig(env=env, suite=suite)
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
    path = directory / REGISTRY
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(registry, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def export_actor(actor: Actor, env: str, kind: str, record: dict,
                 directory: Path = EXPERTS_DIR) -> Path:
    """Write the actor and its registry record."""
    path = actor_path(env, kind, directory)
    with _locked():
        save_actor(actor, path, {"env": env, "kind": kind})
        write_record(env, kind, {"file": path.name, **record}, directory)
    return path


def export_if_better(actor: Actor, config: SACConfig, row: dict,
                     directory: Path = EXPERTS_DIR) -> bool:
    """Export `actor` as the expert of `config.env` if `row` beats the stored expert."""
    with _locked():
        current = read_registry(directory).get(config.env, {}).get("expert")
        if current is not None and current["return_mean"] >= row["return_mean"]:
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
    export_actor(actor, config.env, "expert", record, directory)
    return True


def load_actor(env: str, kind: str = "expert", directory: Path = EXPERTS_DIR) -> Actor:
    """The stored `kind` actor of `env`; DataError naming the training command if absent."""
    path = actor_path(env, kind, directory)
    if not path.exists():
        hint = (f"train it with `{train_command(env)}`" if kind == "expert" else
                f"train the expert with `{train_command(env)}`, then run "
                f"`python -m tasks.generators.experts export-medium --env {env}`")
        raise DataError(f"no {kind} actor for {env!r} in {directory}: {hint}")
    with safe_open(str(path), "pt") as f:
        arch = json.loads(f.metadata()["arch"])
    actor = Actor(**arch)
    actor.load_state_dict(load_file(str(path)))
    actor.eval()
    return actor


def actor_policy(actor: Actor, noise: float = 0.0, generator: torch.Generator | None = None):
    """obs [S] (numpy) -> action [A]: tanh(mean), plus Gaussian noise of std `noise`, clipped."""

    def policy(obs):
        with torch.no_grad():
            action = actor.act(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
            if noise > 0:
                action = action + noise * torch.randn(action.shape, generator=generator)
        return action.clamp(-1.0, 1.0).numpy()

    return policy
