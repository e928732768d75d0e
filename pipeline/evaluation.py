"""Parallel rollouts of stored policies: one Ray task per (episode chunk, seed).

An evaluation of an item on a task with seeds [s1, s2] and 10 episodes per seed on a
4-CPU cluster becomes 4 Ray tasks of 5 episodes each. Episode i of seed s is always
reset with the same env seed, and the policy's sampling noise restarts from that seed at
the episode's start, whatever the chunking, so adding CPUs changes the wall time, not the
episodes (tests/test_determinism.py). Each task loads the item through the store actor,
builds one env per episode (tasks.suites) and rolls the chunk's episodes out side by side,
one batched policy call per step (`tasks.evaluation.rollout_batch`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from library.store import ManifestEntry
from tasks.evaluation import EpisodeStats
from tasks.spec import TaskSpec, dump, parse_task

if TYPE_CHECKING:
    from pipeline.acting import Acting

EPISODE_SEED_STRIDE = 100_003
"""Env reset seed of episode i of eval seed s: s * stride + i (chunks never overlap)."""


@dataclass
class EvalJob:
    """Roll item `item` out on `task` for `seeds`, recorded as a row after `row_task`."""

    item: str
    """Store name of the item to roll out."""
    task: TaskSpec
    """The task whose env, horizon and eval settings are used."""
    row_task: str
    """The stream task after which this evaluation is recorded."""
    position: int
    """Stream position of `row_task`."""
    seeds: list[int]
    """Evaluation seeds (one result row each)."""
    episodes: int | None = None
    """Episodes per seed (default: the task's eval.episodes)."""

    def key(self) -> tuple[str, str, str, str]:
        """(item, eval task, row task, env): one evaluation of the driver in flight."""
        return (self.item, self.task.name, self.row_task, self.task.env)

    @property
    def episodes_per_seed(self) -> int:
        return self.episodes or self.task.eval.episodes


def rollout_digest(task: TaskSpec) -> str:
    """8 hex digits naming what decides an evaluation's episodes besides the item, the
    eval seed and the episode count: the suite, env, dynamics, horizon, step cap and
    candidate actions per state (`roll_with`, `load_acting`; an item's critics are its
    own or its task item's, fixed with its name). Rows of one item with the same digest,
    env, seed and episodes hold the same episodes, whichever stream recorded them."""
    spec = dump(task)
    settings = {key: spec[key] for key in ("suite", "env", "dynamics", "horizon")}
    settings.update(max_steps=task.eval.max_steps, n_candidates=task.eval.n_candidates)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]


def chunks_per_seed(episodes: int, seeds: int, cpus: int) -> int:
    """Split each seed's episodes so that all chunks together about fill the CPUs."""
    return max(1, min(episodes, math.ceil(max(1, cpus) / max(1, seeds))))


@ray.remote(num_cpus=1, max_retries=1)
def rollout_chunk(store, item: str, task_json: dict[str, Any], seed: int, first: int,
                  count: int) -> list[EpisodeStats]:
    """Episodes first .. first+count-1 of eval seed `seed` of item on the task."""
    return roll_episodes(store, item, task_json, seed, first, count)


def roll_episodes(store, item: str, task_json: dict[str, Any], seed: int, first: int,
                  count: int, side_by_side: bool = True) -> list[EpisodeStats]:
    """The body of `rollout_chunk`, in this process: episode i of eval seed s is the same
    whatever `first` and `count` cut around it.

    Side by side (the default), the `count` episodes run at once in `count` envs with one
    batched policy call per step (`tasks.evaluation.rollout_batch`); otherwise one after
    the other in one env. Each episode's noise comes from a generator seeded with its own
    env seed, and every policy call is padded to `pipeline.acting.MIN_ROWS` rows, so both
    ways give the same episodes (tests/test_batched_evaluation.py).
    """
    from pipeline.acting import load_acting

    task = parse_task(task_json)
    first_seed = seed * EPISODE_SEED_STRIDE + first
    act = load_acting(store, item, n_candidates=task.eval.n_candidates, seed=first_seed)
    return roll_with(act, task, seed, first, count, side_by_side)


@contextmanager
def rollout_threads() -> Iterator[None]:
    """One torch thread, as every rollout runs (one CPU per rollout task: a batch-1 or
    batch-8 policy call gains nothing from a second thread, and beside busy fits two
    threads wait on each other); the caller's count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def roll_with(act: Acting, task: TaskSpec, seed: int, first: int, count: int,
              side_by_side: bool = True) -> list[EpisodeStats]:
    """Episodes first .. first+count-1 of eval seed `seed` of the policy `act` on `task`
    (`roll_episodes`'s rollouts, for a policy built by its caller)."""
    import torch

    from tasks.env_pool import pooled_envs
    from tasks.evaluation import rollout, rollout_batch
    from tasks.suites import get_suite

    suite = get_suite(task.suite)
    first_seed = seed * EPISODE_SEED_STRIDE + first
    seeds = list(range(first_seed, first_seed + count))
    # Envs this process built for earlier rollouts of the same env are reused
    # (tasks/env_pool.py): each episode starts from reset(seed), as a new env's would.
    with rollout_threads(), pooled_envs(suite, task.env, task.dynamics, seed, task.horizon,
                                        count if side_by_side else 1) as envs:
        if side_by_side:
            generators = [torch.Generator().manual_seed(s) for s in seeds]
            return rollout_batch(envs, lambda obs, live: act.batch(obs, [generators[i] for i in live]),
                                 seeds, horizon=task.eval.max_steps, suite=suite, env_name=task.env)
        episodes: list[EpisodeStats] = []
        for episode_seed in seeds:
            act.reseed(episode_seed)  # the episode's noise restarts from its own seed
            episodes.extend(rollout(envs[0], act, 1, episode_seed, horizon=task.eval.max_steps,
                                    suite=suite, env_name=task.env))
        return episodes


def launch_evaluation(store, job: EvalJob, resources: dict[str, float]) -> list[ray.ObjectRef]:
    """Start the chunk tasks of `job`; their results are lists of EpisodeStats."""
    episodes = job.episodes_per_seed
    chunks = chunks_per_seed(episodes, len(job.seeds), int(resources.get("CPU", 1)))
    size = math.ceil(episodes / chunks)
    task_json = dump(job.task)
    refs = []
    for seed in job.seeds:
        for first in range(0, episodes, size):
            refs.append(rollout_chunk.remote(store, job.item, task_json, seed, first,
                                             min(size, episodes - first)))
    return refs


def summarise_job(job: EvalJob, stats: list[EpisodeStats]) -> dict[int, dict[str, float]]:
    """Per eval seed: means and spreads of the episodes (tasks.evaluation.summarise)."""
    from tasks.evaluation import summarise
    from tasks.suites import get_suite

    suite = get_suite(job.task.suite)
    by_seed: dict[int, list[EpisodeStats]] = {}
    for episode in stats:
        by_seed.setdefault(episode.seed // EPISODE_SEED_STRIDE, []).append(episode)
    return {seed: summarise(episodes, suite, job.task.env, job.task.eval.cost_threshold)
            for seed, episodes in by_seed.items()}


@dataclass
class EvalSummary:
    """What `psec eval` prints."""

    item: str
    """Store name of the evaluated item."""
    task: str
    """Task it was rolled out on."""
    per_seed: dict[int, dict[str, float]]
    """tasks.evaluation.summarise output per seed."""
    seconds: float
    """Wall seconds of the evaluation."""

    def describe(self) -> str:
        scores = [stats["score_mean"] for stats in self.per_seed.values()]
        returns = [stats["return_mean"] for stats in self.per_seed.values()]
        lengths = [stats["length_mean"] for stats in self.per_seed.values()]
        episodes = sum(int(stats["episodes"]) for stats in self.per_seed.values())
        mean = sum(scores) / len(scores)
        spread = math.sqrt(sum((s - mean) ** 2 for s in scores) / len(scores))
        return (f"{self.item} on {self.task}: normalised score {mean:.3f} ± {spread:.3f} "
                f"over {len(scores)} seed(s), return {sum(returns) / len(returns):.1f}, "
                f"{episodes} episodes of {sum(lengths) / len(lengths):.0f} steps on average "
                f"in {self.seconds:.0f} s")


def stored_task(entry: ManifestEntry, env: str | None,
                n_candidates: int | None = None) -> TaskSpec:
    """The task a stored item is rolled out on: the one it was fitted for, moved to `env`
    of its suite when given, sampling `n_candidates` actions per state when given (the
    task's critic keeps the best: `library.diffusion.select_action`). StoreError for an
    item stored without a task spec, SpecError naming --env for an env the suite does not
    have; both need no Ray, so `psec eval` checks them before it starts any."""
    from library.errors import PsecError, SpecError, StoreError
    from tasks.suites import get_suite

    if entry.task_spec is None:
        raise StoreError(f"{entry.name!r} was stored without a task spec: nothing says where "
                         "to roll it out")
    task = parse_task(entry.task_spec)
    if n_candidates is not None:
        task = task.model_copy(update={"eval": task.eval.model_copy(
            update={"n_candidates": n_candidates})})
    if env is None or env == task.env:
        return task
    try:
        get_suite(task.suite).check_env(env)
    except PsecError as error:
        raise SpecError("--env", str(error)) from None
    return task.model_copy(update={"env": env})


def evaluate_stored(store_uri: str, item: str, episodes: int | None = None,
                    seeds: list[int] | None = None, env: str | None = None,
                    n_candidates: int | None = None) -> EvalSummary:
    """Roll a stored item out on the task it was fitted for, or in `env` of that task's
    suite (e.g. one of a zero-shot composer's eval.envs), with the task's candidate
    actions per state or `n_candidates`. Ray must be connected."""
    from pipeline.store_actor import StoreHandle

    store = StoreHandle(store_uri)
    task = stored_task(store.entry(item), env, n_candidates)
    job = EvalJob(item=item, task=task, row_task=task.name, position=0,
                  seeds=seeds or list(task.eval.seeds), episodes=episodes)
    started = time.perf_counter()
    refs = launch_evaluation(store, job, ray.cluster_resources())
    stats = [episode for chunk in ray.get(refs) for episode in chunk]
    where = task.name if env is None else f"{task.name} [{task.env}]"
    return EvalSummary(item, where, summarise_job(job, stats),
                       time.perf_counter() - started)
