"""Our noise predictor's shape against the official code's, on stand → walk (issue 17).

    python scripts/network_shape.py --out /tmp/netshape            # fits, then the table
    python scripts/network_shape.py --out /tmp/netshape --table    # the table of what is there

For each shape — ours (residual blocks 256 → 256, fixed sinusoidal time features) and the
official (blocks 256 → 1024 → 256, learned Fourier time features: `network: {block_width:
4, time_embedding: learned}` on the base) — and each stream seed 0, 1, 2, it writes the
stand → walk part of configs/dmc_walker.yaml with that base shape and runs it at scale
`small` (base 10k steps at batch 256 on 50 stand episodes, walk skill 3k steps and the
s2w composer 1.5k steps on 10 walk trajectories), evaluated on 10 episodes, each into a
store of its own under --out. Runs already in their store are skipped (psec run resumes).
The table: mean ± std over seeds of each item's score and of its fit's seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SHAPES = {"ours": None, "official": {"block_width": 4, "time_embedding": "learned"}}
SEEDS = (0, 1, 2)
ITEMS = ("walker-stand", "walker-walk", "s2w")


def write_stream(out: Path, shape: str, seed: int) -> Path:
    stream = yaml.safe_load((REPO / "configs" / "dmc_walker.yaml").read_text())
    stream["name"], stream["seed"] = f"netshape_{shape}_{seed}", seed
    stream["tasks"] = stream["tasks"][:2]  # stand (the base) and walk
    if SHAPES[shape] is not None:
        stream["tasks"][0]["network"] = SHAPES[shape]
    for scale in stream["scales"].values():
        if "data_episodes" in scale:
            scale["data_episodes"].pop("walker-run", None)
    stream["scales"]["small"]["eval_episodes"] = 10
    path = out / f"{shape}_{seed}.yaml"
    path.write_text(yaml.safe_dump(stream, sort_keys=False))
    return path


def run_all(out: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    psec = Path(sys.executable).parent / "psec"
    for seed in SEEDS:
        for shape in SHAPES:
            stream = write_stream(out, shape, seed)
            subprocess.run([str(psec), "run", str(stream), "--scale", "small",
                            "--store", str(out / f"store_{shape}_{seed}")], check=True, env=env)


def table(out: Path) -> str:
    from library.store import SkillStore

    cells: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for shape in SHAPES:
        for seed in SEEDS:
            root = out / f"store_{shape}_{seed}"
            if not root.exists():
                continue
            store = SkillStore(str(root))
            rows = store.results().to_pylist()
            for item in ITEMS:
                if not store.exists(item):
                    continue  # a run still going, or stopped before this item
                scores = [row["score"] for row in rows if row["name"] == item
                          and row["eval_task"] == row["task"]]
                entry = store.entry(item)
                cell = cells.setdefault((shape, item), ([], []))
                cell[0].extend(scores[-1:])
                cell[1].append(entry.metrics["train_seconds"])

    def fmt(values: list[float], digits: int = 0) -> str:
        if not values:
            return "—"
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f} (n={len(values)})"

    lines = ["| shape | stand base (score) | walk skill (score) | s2w PSEC (score) | base fit s | walk skill fit s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for shape in SHAPES:
        scores = [fmt(cells.get((shape, item), ([], []))[0]) for item in ITEMS]
        seconds = [fmt(cells.get((shape, item), ([], []))[1]) for item in ITEMS[:2]]
        lines.append(f"| {shape} | {' | '.join(scores)} | {' | '.join(seconds)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for streams and stores")
    parser.add_argument("--table", action="store_true", help="only print the table")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table:
        run_all(args.out)
    print(table(args.out))


if __name__ == "__main__":
    main()
