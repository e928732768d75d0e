"""Speed of the Ray pipeline on 2 CPUs, as JSON lines.

    python -m benchmarks.pipeline --json           # the figures (tens of minutes on 2 CPUs)
    python -m benchmarks.pipeline --json --quick   # tiny sizes, for tests (a few minutes)
    python -m benchmarks.pipeline --json --only parallel_speedup
    python -m benchmarks.pipeline --json --only train_contention

`skill_registered_s` — a `psec serve` driver is running on a store holding a walker-stand
base; a walker-walk skill spec is submitted (`psec submit`) and the clock stops when the
submission is done: its 10 expert trajectories generated and stored, the LoRA skill
fitted for 10k steps (batch 256, one Ray Train worker using both CPUs, as a serving
driver with one task at a time sizes it) and registered, and the skill evaluated
(10 episodes, the rollouts split over both CPUs). Goal ≤ 180 s.

`parallel_speedup` — two skills on the same base (5k steps each): their fit units one
after the other, then both at once, each fit sized as the driver sizes fits that share
2 CPUs (1 worker × 1 CPU: a plain Ray task, or with `--single-worker trainer` a
TorchTrainer of one worker). Start-up and shut-down are counted: they are part of what a
fit costs. Goal ≥ 1.8×. `speedup_vs_whole_machine` compares the concurrent pair
with the pair fitted one after the other with both CPUs each (2 torch threads); `--quick`
leaves that third pair out (its two trainer start-ups are half a minute of a test).

`train_contention` — the same LoRA training as one fit of `parallel_speedup` (5k steps,
batch 256, 1 torch thread), in plain processes without Ray: one alone, then two at once.
`ceiling` = 2 × alone / pair is the speedup that running two fits at once could give on
this machine if starting and stopping them cost nothing: the bound `parallel_speedup`
cannot pass here, whatever the pipeline does.

`stage_wall_s` lines — where the time of the submitted skill went: dataset generation,
TorchTrainer start-up, training, shut-down, evaluation.

The base is pretrained in this process (a few hundred steps: its quality does not change
any timing), so only the measured work runs on Ray. The machine may be shared: `load`
in each line is the 1-minute load average when the measurement ended.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import yaml

import pipeline  # noqa: F401  (sets RAY_AUTH_MODE before Ray is imported)


def _emit(record: dict, as_json: bool) -> None:
    record = {**record, "load": round(os.getloadavg()[0], 2)}
    if as_json:
        print(json.dumps(record), flush=True)
    else:
        extras = ", ".join(f"{k}={v}" for k, v in record.items() if k not in ("metric", "value"))
        print(f"{record['metric']}: {record['value']}  ({extras})", flush=True)


def _base_item(quick: bool) -> tuple[dict, dict, pa.Table]:
    """A walker-stand base pretrained in-process on generated expert data."""
    import torch

    from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
    from library.learners import BaseLearner
    from library.serialization import dump_base
    from library.training import train
    from tasks.dataset import to_offline_data
    from tasks.generators import generate
    from tasks.spec import parse_task

    task = parse_task({"name": "walker-stand", "suite": "dmc", "env": "walker-stand",
                       "role": "base",
                       "data": {"source": "generate", "policy": "expert",
                                "episodes": 2 if quick else 5}})
    table = generate(task)
    data = to_offline_data(table)
    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(obs_dim=data.obs_dim, act_dim=data.act_dim),
                             StateNormalizer.from_data(data.obs))
    train(BaseLearner(policy), data, steps=50 if quick else 300, batch_size=256, lr=3e-4,
          seed=0)
    config, tensors = dump_base(policy)
    return config, tensors, table


def _fresh_store(root: Path, name: str, base: tuple[dict, dict, pa.Table]):
    from library.store import SkillStore

    store = SkillStore(str(root / name))
    config, tensors, table = base
    store.register("walker-stand", "base", config, tensors)
    store.put_dataset("walker-stand", table)
    return store


def skill_registered(root: Path, base, quick: bool, as_json: bool) -> None:
    from pipeline.driver import DriverOptions, StreamSummary
    from pipeline.serving import serve, submit

    store = _fresh_store(root, "submit", base)
    steps = 200 if quick else 10_000
    spec = {"name": "walker-walk", "suite": "dmc", "env": "walker-walk", "role": "skill",
            "base": "walker-stand",
            "data": {"source": "generate", "policy": "expert", "episodes": 2 if quick else 10,
                     "seed": 1},
            "train": {"steps": steps, "batch_size": 256},
            "eval": {"episodes": 2 if quick else 10, "seeds": [0],
                     **({"max_steps": 50} if quick else {})}}
    path = root / "walker-walk.yaml"
    path.write_text(yaml.safe_dump(spec))

    summaries: list[StreamSummary] = []
    # One task at a time: the serving driver gives the fit the whole machine.
    options = DriverOptions(progress=False, concurrent_fits=1)
    server = threading.Thread(target=serve, kwargs={
        "store_uri": store.uri, "max_tasks": 1, "poll": 0.1, "options": options,
        "record": summaries})
    server.start()
    time.sleep(2.0)  # the server is up and polling, as a long-running one would be
    started = time.perf_counter()
    submission = submit(str(path), store.uri, wait=True, poll=0.1)
    seconds = time.perf_counter() - started
    server.join()
    if submission.status != "done" or not summaries:
        raise RuntimeError(f"the benchmark's submission failed: {submission.message}")
    summary = summaries[0]
    _emit({"metric": "skill_registered_s", "value": round(seconds, 1), "goal": "<= 180",
           "steps": steps, "batch_size": 256, "episodes": spec["data"]["episodes"]}, as_json)
    unit = summary.unit_seconds.get("walker-walk", 0.0)
    stages = {
        "dataset": summary.dataset_seconds.get("walker-walk", 0.0),
        "fit_unit": unit,
        "train": summary.stage_seconds.get("walker-walk", 0.0),
        "evaluation": max(summary.eval_seconds.values(), default=0.0),
    }
    for stage, value in stages.items():
        _emit({"metric": "stage_wall_s", "stage": stage, "value": round(value, 1)}, as_json)
    trainer = summary.unit_trainer_seconds.get("walker-walk", (0.0, 0.0))
    _emit({"metric": "stage_wall_s", "stage": "trainer_start", "value": round(trainer[0], 1)},
          as_json)
    _emit({"metric": "stage_wall_s", "stage": "trainer_stop", "value": round(trainer[1], 1)},
          as_json)


def _walk_table(quick: bool) -> pa.Table:
    """Walker-walk expert data of the two skills of `parallel_speedup` (and of the
    trainings of `train_contention`)."""
    from tasks.generators import generate
    from tasks.spec import parse_task

    return generate(parse_task({
        "name": "walker-walk", "suite": "dmc", "env": "walker-walk",
        "data": {"source": "generate", "policy": "expert", "episodes": 2 if quick else 10}}))


def _pair_steps(quick: bool) -> int:
    """Training steps of each skill of the pair (and of each `train_contention` run)."""
    return 100 if quick else 5_000


def parallel_speedup(root: Path, base, walk_table: pa.Table, quick: bool, as_json: bool,
                     single_worker: str = "task") -> None:
    import ray

    from pipeline.fit import launch_fit, size_job
    from pipeline.fit_job import FitOptions
    from pipeline.plan import plan_task
    from pipeline.store_actor import StoreHandle
    from tasks.spec import parse_task

    steps = _pair_steps(quick)

    def fit_pair(name: str, concurrent_fits: int, together: bool) -> tuple[float, float]:
        """(wall seconds of the pair, mean training seconds of one fit)."""
        store = _fresh_store(root, name, base)
        store.put_dataset("walk-data", walk_table)
        handle = StoreHandle(store.uri)
        jobs = []
        for skill in ("skill-a", "skill-b"):
            task = parse_task({"name": skill, "suite": "dmc", "env": "walker-walk",
                               "base": "walker-stand",
                               "data": {"source": "store", "dataset": "walk-data"},
                               "train": {"steps": steps, "batch_size": 256}})
            unit = plan_task(task, ["walker-stand"]).units[skill]
            options = FitOptions(concurrent_fits=concurrent_fits, single_worker=single_worker)
            jobs.append(size_job(unit, name, 0, options, ray.cluster_resources()))
        started = time.perf_counter()
        if together:
            reports = ray.get([launch_fit(job, handle, None) for job in jobs])
        else:
            reports = [ray.get(launch_fit(job, handle, None)) for job in jobs]
        wall = time.perf_counter() - started
        train = sum(sum(r.stage_seconds.values()) for r in reports) / len(reports)
        return wall, train

    sequential, sequential_train = fit_pair("sequential", concurrent_fits=2, together=False)
    concurrent, concurrent_train = fit_pair("concurrent", concurrent_fits=2, together=True)
    # train_s: training seconds of one fit (without trainer start/stop) in each setting;
    # concurrent > sequential shows the two fits competing for CPU beyond their one each.
    figures = {"metric": "parallel_speedup", "value": round(sequential / concurrent, 2),
               "goal": ">= 1.8", "steps": steps, "single_worker": single_worker,
               "sequential_s": round(sequential, 1),
               "concurrent_s": round(concurrent, 1),
               "train_s_sequential": round(sequential_train, 1),
               "train_s_concurrent": round(concurrent_train, 1)}
    if not quick:
        whole, whole_train = fit_pair("sequential-whole-machine", concurrent_fits=1,
                                      together=False)
        figures |= {"sequential_whole_machine_s": round(whole, 1),
                    "speedup_vs_whole_machine": round(whole / concurrent, 2),
                    "train_s_whole_machine": round(whole_train, 1)}
    _emit(figures, as_json)


def _train_in_process(config: dict, tensors: dict, table: pa.Table, steps: int,
                      barrier, seconds) -> None:
    """One LoRA skill trained on `table` in this (spawned) process; its training seconds
    go to the `seconds` queue. The barrier starts every process's training at once."""
    import torch

    from library.learners import SkillLearner
    from library.serialization import load_base
    from library.training import train
    from tasks.dataset import to_offline_data

    torch.set_num_threads(1)
    torch.manual_seed(0)
    learner = SkillLearner(load_base(config, tensors), "skill")
    data = to_offline_data(table)
    barrier.wait()
    seconds.put(train(learner, data, steps=steps, batch_size=256, lr=3e-4, seed=0).seconds)


def train_contention(root: Path, base, table: pa.Table, quick: bool, as_json: bool) -> None:
    import multiprocessing

    config, tensors, _ = base
    steps = _pair_steps(quick)
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds Ray

    def run(count: int) -> float:
        """Mean training seconds of `count` processes trained at once."""
        barrier, seconds = spawn.Barrier(count), spawn.Queue()
        workers = [spawn.Process(target=_train_in_process,
                                 args=(config, tensors, table, steps, barrier, seconds))
                   for _ in range(count)]
        for worker in workers:
            worker.start()
        times = [seconds.get() for _ in workers]
        for worker in workers:
            worker.join()
        return sum(times) / count

    alone, pair = run(1), run(2)
    _emit({"metric": "train_contention", "value": round(pair / alone, 3), "steps": steps,
           "train_s_alone": round(alone, 1), "train_s_pair": round(pair, 1),
           "ceiling": round(2 * alone / pair, 2)}, as_json)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the Ray instance")
    parser.add_argument("--only",
                        choices=("skill_registered", "parallel_speedup", "train_contention"),
                        default=None, help="run one of the measurements")
    parser.add_argument("--single-worker", choices=("task", "trainer"), default="task",
                        help="how parallel_speedup runs its one-worker fits (FitOptions)")
    args = parser.parse_args(argv)

    import ray
    import torch

    from pipeline.runtime import connect

    torch.set_num_threads(1)
    connect("local", num_cpus=args.cpus)
    try:
        with tempfile.TemporaryDirectory(prefix="psec-bench-") as folder:
            root = Path(folder)
            base = _base_item(args.quick)
            if args.only in (None, "skill_registered"):
                skill_registered(root, base, args.quick, args.json)
            # The same walk data serves both pair measurements: generated once.
            walk = (_walk_table(args.quick)
                    if args.only in (None, "parallel_speedup", "train_contention") else None)
            if args.only in (None, "parallel_speedup"):
                parallel_speedup(root, base, walk, args.quick, args.json, args.single_worker)
            if args.only in (None, "train_contention"):
                train_contention(root, base, walk, args.quick, args.json)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
