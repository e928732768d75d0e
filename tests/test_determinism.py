"""Refits and re-evaluations are reproducible on CPU, bit for bit.

A fit goes through the loop a one-worker unit runs in its Ray task (`pipeline.unit_loop.run_unit`
with the task's own checkpoint session), without Ray: the same spec with the same seed
stores the same weights (sha256 of the safetensors file), in this process and in a fresh
one; another seed stores other weights. Rolling a stored policy out is the body of the
evaluation's Ray task (`pipeline.evaluation.roll_episodes`): the same episodes give the
same returns however they are cut into chunks (the cluster's CPU count decides that).

What stays outside these guarantees (docs/DEVIATIONS.md, "Reproducibility"): the number
of Ray Train workers and of torch threads per worker are training inputs, like the seed.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pipeline_builders import put_datasets, register_base, tiny_task, write_stream

from library.store import SkillStore
from pipeline.checkpoints import TaskSession
from pipeline.evaluation import roll_episodes
from pipeline.fit_job import FitJob, FitOptions
from pipeline.plan import plan_stream
from pipeline.unit_loop import run_unit
from tasks.spec import dump, load_stream, parse_task

torch.set_num_threads(1)

TESTS = Path(__file__).parent


class LocalStore(SkillStore):
    """The store actor's `register_once` on a plain store (one process, no Ray)."""

    def register_once(self, name, kind, config, tensors, **kwargs):
        if self.exists(name):
            return self.entry(name), False
        return self.register(name, kind, config, tensors, **kwargs), True


def fit_tiny_stream(root: Path, seed: int, threads: int = 1) -> dict[str, str]:
    """Fit a tiny stream of stream seed `seed` in a fresh store under `root`, each unit
    through the one-worker unit loop with `threads` torch threads (the worker's CPUs): a
    base `stand`, a LoRA skill `walk` on it and a composer `s2w` of base + walk (every
    stage kind that draws initial weights). Returns each item's sha256."""
    tasks = [tiny_task("stand", role="base", train={"steps": 30, "batch_size": 32}),
             tiny_task("walk", base="stand", train={"steps": 10, "batch_size": 32},
                       lora={"rank": 2}, composers=[{"name": "s2w", "skills": ["base"],
                                                     "steps": 10}])]
    store = LocalStore(str(root / "store"))
    put_datasets(store.uri, tasks)
    path = Path(write_stream(root / "stream.yaml", tasks))
    path.write_text(path.read_text().replace("continual: true", f"continual: true\nseed: {seed}"))
    plan = plan_stream(load_stream(str(path)))
    for unit in plan.units.values():  # in an order where a unit follows those it needs
        job = FitJob(stream=plan.stream, stream_seed=seed, unit=unit, workers=1,
                     cpus_per_worker=threads, gpus_per_worker=0,
                     options=FitOptions(checkpoint_every=10))
        run_unit(job, store, None, TaskSession(job, store.uri))
    return {entry.name: entry.sha256 for entry in store.list()}


def test_two_fits_with_the_same_seed_store_bit_identical_weights(tmp_path):
    first = fit_tiny_stream(tmp_path / "a", seed=0)
    again = fit_tiny_stream(tmp_path / "b", seed=0)
    other = fit_tiny_stream(tmp_path / "c", seed=1)

    assert set(first) == {"stand", "walk", "s2w"}
    assert again == first
    # The seed reaches every item's weights: the equality above is not vacuous.
    assert all(other[name] != first[name] for name in first)


def test_a_fit_in_a_fresh_process_stores_the_same_weights(tmp_path):
    here = fit_tiny_stream(tmp_path / "here", seed=0)
    script = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); "
              "from pathlib import Path; import torch; torch.set_num_threads(1); "
              "import json; from test_determinism import fit_tiny_stream; "
              f"print(json.dumps(fit_tiny_stream(Path({str(tmp_path / 'there')!r}), seed=0)))")
    there = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                           text=True, cwd=TESTS.parent).stdout.splitlines()[-1]
    assert json.loads(there) == here


@pytest.fixture(scope="module")
def stored_policy(tmp_path_factory):
    """An untrained base (its samples are far from deterministic) and a walker task that
    rolls it out for 15 steps an episode."""
    root = tmp_path_factory.mktemp("eval")
    task = tiny_task("stand", role="base")
    task["eval"]["max_steps"] = 15
    store = SkillStore(str(root / "store"))
    put_datasets(store.uri, [task])
    register_base(store.uri, "stand", "stand-data")
    return store, dump(parse_task(task))


def test_evaluating_a_stored_policy_twice_gives_identical_returns(stored_policy):
    store, task = stored_policy
    first = roll_episodes(store, "stand", task, seed=0, first=0, count=3)
    again = roll_episodes(store, "stand", task, seed=0, first=0, count=3)
    other_seed = roll_episodes(store, "stand", task, seed=1, first=0, count=3)

    returns = [e.episode_return for e in first]
    assert [e.episode_return for e in again] == returns
    assert len(set(returns)) == 3  # three episodes, three different returns
    assert [e.episode_return for e in other_seed] != returns


def test_an_episode_returns_the_same_whatever_chunk_it_is_rolled_out_in(stored_policy):
    store, task = stored_policy
    whole = roll_episodes(store, "stand", task, seed=0, first=0, count=3)
    # A cluster with more CPUs cuts the same three episodes into more chunks.
    chunked = (roll_episodes(store, "stand", task, seed=0, first=0, count=1)
               + roll_episodes(store, "stand", task, seed=0, first=1, count=2))

    assert [(e.seed, e.episode_return) for e in chunked] == [
        (e.seed, e.episode_return) for e in whole]


def test_episodes_side_by_side_are_the_episodes_rolled_out_one_after_another(stored_policy):
    store, task = stored_policy
    together = roll_episodes(store, "stand", task, seed=0, first=0, count=3)
    apart = roll_episodes(store, "stand", task, seed=0, first=0, count=3, side_by_side=False)

    assert [(e.seed, e.episode_return, e.score) for e in apart] == [
        (e.seed, e.episode_return, e.score) for e in together]
