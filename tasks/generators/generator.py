"""`generate(task)`: a task's offline dataset, made by rolling out the policy its spec names.

What `data.policy` means per suite (D4RL's definitions where they exist):

| suite | policy | data |
| --- | --- | --- |
| dmc, mujoco | expert | the committed SAC expert, deterministic (+ `action_noise`) |
| dmc, mujoco | medium | the committed mid-training actor, ≈ 1/3–1/2 of expert return |
| dmc, mujoco | random | uniform actions |
| dmc, mujoco | medium-replay | the SAC replay buffer up to the medium snapshot (stored episodes) |
| dmc, mujoco | medium-expert | half the episodes medium, half expert, concatenated (with `max_transitions`: half the transitions each) |
| metaworld | scripted | Meta-World's hand-written expert (+ `action_noise` for mixed quality) |
| metaworld | random | uniform actions |
| bullet_safety | expert | a mixture of behaviour policies spanning the reward–cost frontier: one SAC actor per penalty λ on r − λ·c, episodes split evenly |
| bullet_safety | random | uniform actions |

With `data.envs` the dataset is the union over those envs, `episodes` each. The same
spec and seed give the same table (same `tasks.dataset.fingerprint`).

Every generated table records what made it (`generated_from`: the data fields of its spec
and a digest of each actor or replay file it read). A store keeps datasets by task name,
so a rerun into the same store would otherwise reuse a dataset made from another spec or
from actors retrained since; `check_stored` refuses that with a one-line StoreError.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from library.errors import DataError, SpecError, StoreError
from tasks.dataset import concatenate, dataset_meta, limit_transitions, to_arrays, to_table
from tasks.generators import experts
from tasks.generators.rollouts import Recording, derive_seed, noisy, random_policy, record
from tasks.spec import TaskSpec
from tasks.suites import get_suite
from tasks.suites.base import Suite

POLICIES = {
    "dmc": ("expert", "medium", "random", "medium-replay", "medium-expert"),
    "mujoco": ("expert", "medium", "random", "medium-replay", "medium-expert"),
    "metaworld": ("scripted", "random"),
    "bullet_safety": ("expert", "random"),
}


def check_policy(suite: str, policy: str) -> None:
    """SpecError on `data.policy` if `suite` has no generator for `policy`."""
    if policy not in POLICIES[suite]:
        raise SpecError("data.policy", f"suite {suite} cannot generate {policy!r} data "
                        f"(supported: {', '.join(POLICIES[suite])})")


def behaviour_kinds(env: str, directory: Path = experts.EXPERTS_DIR) -> list[str]:
    """Stored actor kinds of a safety env, by increasing cost penalty λ ("expert" is λ = 0)."""
    stored = experts.read_registry(directory).get(env, {})
    kinds = [k for k in stored if k == "expert" or k.startswith("lambda")]
    return sorted(kinds, key=lambda k: stored[k].get("cost_penalty", 0.0))


def check_can_generate(task: TaskSpec) -> None:
    """SpecError on `data.policy` unless `task`'s data can be generated here: a generator
    for its policy, and the committed actors (or replay data) that generator rolls out.

    Generation fails on a missing actor anyway, but only after the stream's earlier
    datasets were made and stored; the driver checks every task first, so a refused run
    writes nothing.
    """
    policy = task.data.policy
    check_policy(task.suite, policy)
    for env in task.data.envs or [task.env]:
        files = _source_files(task, env)
        if task.suite == "bullet_safety" and policy == "expert" and not files:
            missing = ["behaviour policies"]
        else:
            kinds = [label.rsplit("/", 1)[1] for label, path in files.items()
                     if not path.exists()]
            missing = [f"{kind} data" if kind == "medium-replay" else f"{kind} actor"
                       for kind in kinds]
        if missing:
            raise SpecError("data.policy", f"task {task.name!r} needs the {' and '.join(missing)} "
                            f"of {env!r}, which tasks/experts lacks: train it with "
                            f"`{experts.train_command(env, task.suite)}`")


def _source_files(task: TaskSpec, env: str,
                  directory: Path = experts.EXPERTS_DIR) -> dict[str, Path]:
    """The committed files whose contents decide `task`'s data in `env`: `<env>/<kind>` ->
    path (an actor of that kind, or kind medium-replay: the stored replay data)."""
    policy = task.data.policy
    if task.suite == "bullet_safety" and policy == "expert":
        kinds = behaviour_kinds(env, directory)
    else:
        kinds = {"expert": ["expert"], "medium": ["medium"],
                 "medium-expert": ["medium", "expert"]}.get(policy, [])
    files = {f"{env}/{kind}": experts.actor_path(env, kind, directory) for kind in kinds}
    if policy == "medium-replay":
        files[f"{env}/medium-replay"] = experts.replay_path(env, directory)
    return files


def _digest(path: Path) -> str:
    if not path.exists():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def generation_key(task: TaskSpec, episodes: int | None = None,
                   directory: Path = experts.EXPERTS_DIR) -> dict[str, Any]:
    """What decides the table `generate(task)` makes: the spec's data fields, dynamics and
    horizon, and a digest of every actor (or replay) file it reads (JSON-ready)."""
    data = task.data
    envs = data.envs or [task.env]
    actors = {label: _digest(path) for env in envs
              for label, path in _source_files(task, env, directory).items()}
    key = {"suite": task.suite, "envs": envs, "policy": data.policy,
           "episodes": data.episodes if episodes is None else episodes, "seed": data.seed,
           "action_noise": data.action_noise, "max_transitions": data.max_transitions,
           "dynamics": task.dynamics.model_dump(), "horizon": task.horizon, "actors": actors}
    return json.loads(json.dumps(key))  # the form it has after a round trip through metadata


def check_stored(task: TaskSpec, name: str, meta: dict[str, Any],
                 directory: Path = experts.EXPERTS_DIR) -> None:
    """StoreError unless stored dataset `name` (metadata `meta`) is what `generate(task)`
    would make now. A table stored before psec recorded `generated_from` is not checked."""
    recorded = meta.get("generated_from")
    if recorded is None:
        return
    current = generation_key(task, directory=directory)
    fields = [k for k in current if k != "actors" and recorded.get(k) != current[k]]
    if fields:
        shown = ", ".join(f"{k}={recorded.get(k)!r} (now {current[k]!r})" for k in fields[:3])
        raise StoreError(f"dataset {name!r} in the store was generated with {shown} "
                         f"(another scale or an edited stream): use another store or rename "
                         f"task {task.name!r}")
    before, now = recorded.get("actors", {}), current["actors"]
    changed = [label for label in sorted(set(before) | set(now))
               if before.get(label) != now.get(label)]
    if changed:
        label = changed[0]
        raise StoreError(f"dataset {name!r} in the store was generated by other actors than "
                         f"tasks/experts holds now ({label}: {before.get(label, 'none')} -> "
                         f"{now.get(label, 'none')}; {len(changed)} changed): use another "
                         "store to regenerate it, or check out the actors it was made with")


def _record_env(suite_name: str, suite: Suite, task: TaskSpec, env: str, episodes: int,
                seed: int, directory: Path) -> tuple[Recording, dict]:
    """Roll out the task's policy in `env`; returns the recording and extra metadata."""
    data = task.data
    policy, noise = data.policy, float(data.action_noise or 0.0)
    instance = suite.make_env(env, task.dynamics, seed, task.horizon)
    act_dim = instance.action_space.shape[0]
    rng = np.random.default_rng(derive_seed(seed, 1))  # actions: uniform draws or noise

    def actor(kind: str):
        return noisy(experts.actor_policy(experts.load_actor(env, kind, directory)), noise, rng)

    if policy == "random":
        return record(instance, suite, random_policy(act_dim, rng), episodes, seed), {}
    if policy == "scripted":
        from tasks.suites.metaworld import scripted_policy

        return record(instance, suite, noisy(scripted_policy(env), noise, rng), episodes, seed), {}
    if policy in ("expert", "medium") and suite_name != "bullet_safety":
        return record(instance, suite, actor(policy), episodes, seed), {}
    if policy == "medium-expert":
        # Actors load before any rollout, so a missing one fails before work is done.
        medium, expert = actor("medium"), actor("expert")
        rec = record(instance, suite, medium, (episodes + 1) // 2, derive_seed(seed, 2))
        record(instance, suite, expert, episodes // 2, derive_seed(seed, 3), into=rec)
        return rec, {"episode_policy": ["medium"] * ((episodes + 1) // 2) + ["expert"] * (episodes // 2)}
    # bullet_safety expert: the behaviour-policy mixture
    kinds = behaviour_kinds(env, directory)
    if not kinds:
        raise DataError(
            f"no behaviour policies for {env!r} in {directory}: train them with "
            f"`{experts.train_command(env, suite_name)} --cost-penalty L` for several L (e.g. 0, 0.5, 2)")
    policies = [actor(kind) for kind in kinds]
    rec, labels = Recording(), []
    for index in range(episodes):  # round robin: every policy gets an equal share
        kind = kinds[index % len(kinds)]
        record(instance, suite, policies[index % len(kinds)], 1, derive_seed(seed, 4, index), into=rec)
        labels.append(kind)
    return rec, {"episode_policy": labels}


def _medium_replay(task: TaskSpec, env: str, episodes: int, seed: int,
                   directory: Path) -> dict[str, np.ndarray]:
    """`episodes` of the stored medium-replay episodes (all if fewer), chosen by `seed`."""
    if not task.dynamics.is_default:
        raise SpecError("dynamics", "medium-replay data was recorded with the default dynamics")
    if task.data.action_noise:
        raise SpecError("data.action_noise", "medium-replay data is replayed, not rolled out")
    replay = experts.load_replay(env, directory)
    ids = np.unique(replay["episode"])
    if episodes < len(ids):
        ids = np.sort(np.random.default_rng(seed).choice(ids, episodes, replace=False))
    keep = np.isin(replay["episode"], ids)
    arrays = {k: v[keep] for k, v in replay.items() if k != "costs"}
    arrays["episode"] = np.unique(arrays["episode"], return_inverse=True)[1].astype(np.int64)
    if task.suite == "bullet_safety":
        arrays["costs"] = replay["costs"][keep]
    return arrays


def generate(task: TaskSpec, episodes: int | None = None,
             directory: Path = experts.EXPERTS_DIR) -> pa.Table:
    """The canonical dataset table of `task` (its `data.source` must be `generate`).

    `episodes` overrides `data.episodes` (per env); `directory` holds the expert actors.
    """
    data = task.data
    if data.source != "generate":
        raise SpecError("data.source", f"task {task.name!r} imports its data ({data.source!r}); "
                        "only source 'generate' is generated")
    check_policy(task.suite, data.policy)
    episodes = data.episodes if episodes is None else episodes
    if episodes < 1:
        raise SpecError("data.episodes", f"must be >= 1, got {episodes}")
    suite = get_suite(task.suite)
    envs = data.envs or [task.env]
    with_costs = task.suite == "bullet_safety"
    common = {"suite": task.suite, "source": "generate", "generator": data.policy,
              "seed": data.seed, "action_noise": data.action_noise,
              "dynamics": task.dynamics.model_dump(), "horizon": task.horizon,
              "generated_from": generation_key(task, episodes, directory)}
    tables = []
    for index, env in enumerate(envs):
        seed = derive_seed(data.seed, index)
        meta = {**common, "env": env, "episodes": episodes}
        if data.policy == "medium-replay":
            arrays = _medium_replay(task, env, episodes, seed, directory)
            meta["episodes"] = int(arrays["episode"].max()) + 1
        else:
            rec, extra = _record_env(task.suite, suite, task, env, episodes, seed, directory)
            arrays = rec.arrays(with_costs)
            meta.update(return_mean=float(np.mean(rec.returns)), episode_returns=rec.returns, **extra)
            if task.suite == "metaworld":
                meta.update(success_rate=float(np.mean(rec.successes)), episode_success=rec.successes)
            if with_costs:
                meta.update(cost_mean=float(np.mean(rec.episode_costs)), episode_costs=rec.episode_costs)
        tables.append(to_table(arrays, meta))
    if len(tables) == 1:
        table = tables[0]
    else:
        # Per-env summaries survive the union; the per-episode lists are the envs' own.
        summary_keys = ("episodes", "return_mean", "success_rate", "cost_mean")
        per_env = {env: {k: meta[k] for k in summary_keys if k in meta}
                   for env, meta in zip(envs, map(dataset_meta, tables))}
        table = concatenate(tables, {**common, "env": task.env, "envs": envs,
                                     "episodes_per_env": episodes, "per_env": per_env})
    if data.max_transitions is not None:
        if data.policy == "medium-expert" and len(tables) == 1:
            table = _halves(table, data.max_transitions)
        table = limit_transitions(table, data.max_transitions)
    return table


def _halves(table: pa.Table, n: int) -> pa.Table:
    """At most `n` transitions of a medium-expert table, half from each actor (D4RL's
    medium-expert is half of each): the first n/2 of the medium episodes and the first
    n/2 of the expert ones. A half shorter than n/2 leaves its remainder to the other.

    A plain cut (`limit_transitions`) keeps only medium transitions once the medium
    episodes alone fill n."""
    arrays, meta = to_arrays(table), dataset_meta(table)
    is_medium = np.asarray(meta["episode_policy"])[arrays["episode"]] == "medium"
    available = int(is_medium.sum()), int((~is_medium).sum())
    keep_medium = min(available[0], max((n + 1) // 2, n - available[1]))
    keep_expert = min(available[1], n - keep_medium)
    parts, kept = [], []  # kept: the recording's episode ids that survive the cut
    for rows, keep in ((is_medium, keep_medium), (~is_medium, keep_expert)):
        if keep:
            episodes = arrays["episode"][rows][:keep]
            kept += [int(e) for e in np.unique(episodes)]
            parts.append(limit_transitions(to_table({k: v[rows] for k, v in arrays.items()}, meta), keep))
    # The per-episode lists follow the kept episodes (a cut one keeps its recorded return).
    lists = {key: [meta[key][e] for e in kept] for key in ("episode_policy", "episode_returns")}
    return concatenate(parts, meta | lists | {"max_transitions": n})
