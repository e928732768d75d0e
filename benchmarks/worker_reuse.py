"""Idle Ray workers stopped or kept: a small stream's wall time and how many worker
processes it started, with RAY_num_workers_soft_limit left to Ray and set as psec's local
Ray sets it (pipeline/runtime.py: keep_idle_workers).

    python -m benchmarks.worker_reuse --json                  # 3 rounds, alternated
    python -m benchmarks.worker_reuse --json --rounds 1 --stream configs/cw10.yaml --tasks 3

Each run is a fresh process that starts its own Ray of 2 CPUs (a node reads the limit when
it starts) and runs the stream at `--scale` (default smoke) into a fresh store; `--tasks N`
keeps the stream's first N tasks. The two settings alternate, so a busy machine slows both
alike; compare them within one run. `workers` counts the distinct worker processes that
ran a task or an actor method (ray.timeline()); each one imported torch, Ray and the
simulator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import yaml

LIMIT_VAR = "RAY_num_workers_soft_limit"


def cut_stream(path: str, tasks: int | None, out: str) -> str:
    """`path` with its first `tasks` tasks (all when None), written to `out`; per-task
    sizes of a scale keep only the tasks kept."""
    with open(path) as f:
        stream = yaml.safe_load(f)
    if tasks is not None:
        names = {task["name"] for task in stream["tasks"]}
        stream["tasks"] = stream["tasks"][:tasks]
        kept = {task["name"] for task in stream["tasks"]}
        for scale in stream.get("scales", {}).values():
            for key, value in list(scale.items()):
                if isinstance(value, dict) and set(value) <= names:  # sizes by task name
                    scale[key] = {name: v for name, v in value.items() if name in kept}
    with open(out, "w") as f:
        yaml.safe_dump(stream, f, sort_keys=False)
    return out


def child(stream: str, scale: str, store: str, keep: bool) -> None:
    """One run in this process: prints {"seconds", "workers"} as JSON."""
    import ray

    from pipeline.driver import DriverOptions, run_stream_file
    from pipeline.runtime import keep_idle_workers

    if keep:
        keep_idle_workers(2)
    ray.init(num_cpus=2, log_to_driver=False)
    started = time.perf_counter()
    run_stream_file(stream, store, scale=scale, options=DriverOptions(progress=False))
    seconds = time.perf_counter() - started
    events = ray.timeline()
    workers = {e["tid"] for e in events if e.get("ph") == "X" and "worker" in str(e.get("tid"))}
    print(json.dumps({"seconds": round(seconds, 1), "workers": len(workers)}), flush=True)
    ray.shutdown()


def run_once(stream: str, scale: str, keep: bool, root: str, index: int) -> dict:
    env = dict(os.environ)
    env.pop(LIMIT_VAR, None)  # "unset" means Ray's own default; "psec" sets it in the child
    env.pop("RAY_ADDRESS", None)
    store = os.path.join(root, f"store-{index}")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker_reuse", "--child", stream, scale, store,
         "keep" if keep else "unset"],
        env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    line = [line for line in result.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting")
    parser.add_argument("--stream", default="configs/dmc_walker.yaml")
    parser.add_argument("--scale", default="smoke")
    parser.add_argument("--tasks", type=int, default=None, help="keep the first N tasks")
    parser.add_argument("--child", nargs=4, metavar=("STREAM", "SCALE", "STORE", "MODE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        stream, scale, store, mode = args.child
        child(stream, scale, store, keep=mode == "keep")
        return
    from pipeline.runtime import worker_limit

    with tempfile.TemporaryDirectory(prefix="psec-workers-") as root:
        stream = cut_stream(args.stream, args.tasks, os.path.join(root, "stream.yaml"))
        rows = []
        for index in range(args.rounds):
            for keep in (False, True):
                figures = run_once(stream, args.scale, keep, root, len(rows))
                row = {"metric": "stream_wall_s", "setting": "psec" if keep else "ray_default",
                       "limit": worker_limit(2) if keep else None, "round": index,
                       "stream": args.stream, "tasks": args.tasks, "scale": args.scale,
                       **figures}
                rows.append(row)
                print(json.dumps(row) if args.json else
                      f"{row['setting']:12s} round {index}: {row['seconds']} s, "
                      f"{row['workers']} worker processes", flush=True)


if __name__ == "__main__":
    main()
