"""Train steps/s of two checkouts of this repository, alternated in one run (an A/B).

    git worktree add /tmp/before <commit>
    python -m benchmarks.compare_train /tmp/before . --threads 1 --rounds 2 --json

Each round runs, for every checkout in turn and in a fresh process, that checkout's own
`benchmarks.core.train_rate` (the marginal steps/s of its `library.training.train` between
runs of `--steps` and 2·`--steps`, after a warm-up) on benchmarks/core.py's learners
(base, LoRA rank 8, composer k = 3 at batch 1024). Alternating
the checkouts within each round keeps a shared machine's drift out of the comparison;
compare figures within one run only. `speedup` is the ratio of the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

# Runs inside the checkout under test (its own library/ and benchmarks/ on sys.path).
_ONE_CHECKOUT = """
import json, torch
from benchmarks.core import learners, train_rate, training_data
torch.set_num_threads({threads})
data = training_data()
print(json.dumps({{what: train_rate(make, data, {batch}, {steps})
                  for what, make in learners().items()}}))
"""


def rates_of(checkout: Path, threads: int, steps: int, batch: int) -> dict[str, float]:
    """{learner: steps/s} of `checkout`, measured in a fresh process run from it."""
    code = _ONE_CHECKOUT.format(threads=threads, steps=steps, batch=batch)
    result = subprocess.run([sys.executable, "-c", code], cwd=checkout, capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{checkout}: the benchmark failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="checkout A (e.g. a git worktree)")
    parser.add_argument("after", type=Path, help="checkout B")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=150, help="n of the n / 2n-step runs")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    for checkout in (args.before, args.after):
        if not (checkout / "library" / "training.py").is_file():
            raise SystemExit(f"{checkout}: not a checkout of this repository")
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        runs["before"].append(rates_of(args.before, args.threads, args.steps, args.batch))
        runs["after"].append(rates_of(args.after, args.threads, args.steps, args.batch))
    for what in runs["before"][0]:
        before = [run[what] for run in runs["before"]]
        after = [run[what] for run in runs["after"]]
        row = {"metric": "train_steps_per_s", "learner": what, "batch": args.batch,
               "threads": args.threads, "before": [round(v, 1) for v in before],
               "after": [round(v, 1) for v in after],
               "speedup": round(statistics.median(after) / statistics.median(before), 2)}
        print(json.dumps(row) if args.json else
              f"{what:<12} before {row['before']}  after {row['after']}  ×{row['speedup']}")


if __name__ == "__main__":
    main()
