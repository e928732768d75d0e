"""How well a base's state normaliser covers the states its skills' data visit.

Every skill and composer on a base normalises states with the base's statistics and
clamps at ±StateNormalizer.CLAMP; a later task that visits states the base's data never
did is clamped there, and its skill learns from a flattened state. For each skill task of
a stream this prints the share of observation entries the clamp cuts, the dimensions
cut in more than 5% of states, and the largest |z|, under the normaliser of the shipped
base (or, without one, of the base's generated data).

    python scripts/normaliser_coverage.py configs/dmc_walker.yaml --scale paper
"""

from __future__ import annotations

import argparse

import torch

from library.diffusion import StateNormalizer
from library.serialization import load_base, split_item
from library.store import SkillStore
from tasks.dataset import to_arrays
from tasks.generators.generator import generate
from tasks.spec import load_stream


def base_normalizer(task) -> StateNormalizer:
    """The shipped base's normaliser, else that of its data (the same statistics)."""
    folder = SkillStore(task.shipped) if task.shipped is not None else None
    if folder is not None and folder.exists(task.name):
        config, tensors = folder.load(task.name)
        return load_base(config, split_item(tensors)[0]).normalizer
    if folder is not None and folder.has_dataset(task.name):
        table = folder.get_dataset(task.name)
    else:
        table = generate(task)
    return StateNormalizer.from_data(torch.as_tensor(to_arrays(table)["obs"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream")
    parser.add_argument("--scale", default="paper")
    args = parser.parse_args()
    stream = load_stream(args.stream, args.scale)
    bases = {task.name: task for task in stream.tasks if task.role == "base"}
    normalizers = {name: base_normalizer(task) for name, task in bases.items()}
    clamp = StateNormalizer.CLAMP
    print(f"| task | base | states | entries clamped at ±{clamp:g} | dims clamped in > 5% of "
          "states | max abs z |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for task in stream.tasks:
        if task.role != "skill":
            continue
        normalizer = normalizers[task.base]
        obs = torch.as_tensor(to_arrays(generate(task))["obs"])
        z = (obs - normalizer.mean) / normalizer.std
        cut = (z.abs() > clamp).float()
        print(f"| {task.name} | {task.base} | {len(obs)} | {cut.mean().item():.4f} | "
              f"{int((cut.mean(0) > 0.05).sum())} | {z.abs().max().item():.1f} |")


if __name__ == "__main__":
    main()
