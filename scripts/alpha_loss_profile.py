"""Why a composer's α(s) stays where it starts: its training loss along α.

A parameter-level composer is trained by the diffusion ε-loss on the target's data plus
the α regulariser (library.composition). This prints that loss for constant weights on a
grid: the stored skill i's weight α_i from 0 to 1 with the new skill's held at 1 (the
composer's start), and along the line from the new skill alone (α_new = 1) to skill i
alone (α_i = 1). Every point is evaluated on the same batches and the same draws of t and
ε (common random numbers), so differences between points are not sampling noise; each
line also gives the standard error of the difference from the start over the batches.

If the ε-loss grows as α_i leaves 0, the composer's gradient pushes α_i back to 0 on the
target's data, whatever skill i would score there: a loss-driven composer cannot find a
skill that acts better on the target but fits its demonstrations worse. The column
"states lowered" is the share of the data's states whose own error falls there: a
state-dependent α(s), or a per-state weighting of the loss (advantage weights), can move
toward skill i only on those states.

    python scripts/alpha_loss_profile.py --store stores/dmc-table-paper \
        --composer sw2r_0b3f843a --dataset walker-run

`--held-out configs/dmc_walker.yaml:walker-run` also (or instead) generates the target's
episodes with another data seed (the same expert and count: episodes the composer never
trained on); `--markdown` puts both in one table.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from library.lora import use_skills
from library.store import SkillStore
from pipeline.acting import load_composer
from tasks.dataset import to_arrays

GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)


def batch_losses(composer, obs: torch.Tensor, actions: torch.Tensor, weights: list[float],
                 batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """The ε-loss of constant layer weights `weights` (one per composed skill) on
    `batches` batches drawn with `seed`: [batches]. The same seed gives every call the
    same rows, t and ε."""
    policy = composer.policy
    g = torch.Generator().manual_seed(seed)
    alpha = torch.tensor(weights, dtype=torch.float32)
    losses = []
    with torch.no_grad(), use_skills(policy, composer.skills, alpha):
        for _ in range(batches):
            rows = torch.randint(0, obs.shape[0], (batch_size,), generator=g)
            losses.append(policy.loss(obs[rows], actions[rows], generator=g)["loss"])
    return torch.stack(losses)


def state_errors(composer, obs: torch.Tensor, actions: torch.Tensor, weights: list[float],
                 draws: int, chunk: int, seed: int) -> torch.Tensor:
    """Each state's ε-error under constant `weights`, averaged over `draws` draws of t and
    ε: [N], every state of the data once per draw. The same seed gives every call the
    same draws."""
    policy = composer.policy
    g = torch.Generator().manual_seed(seed)
    alpha = torch.tensor(weights, dtype=torch.float32)
    total = torch.zeros(obs.shape[0])
    with torch.no_grad(), use_skills(policy, composer.skills, alpha):
        for _ in range(draws):
            for start in range(0, obs.shape[0], chunk):
                rows = slice(start, start + chunk)
                total[rows] += policy.noise_errors(obs[rows], actions[rows], generator=g)
    return total / draws


def lowered_share(errors: torch.Tensor, at_start: torch.Tensor) -> float:
    """The share of states whose error is lower than at the start by more than float32
    rounding (a relative 1e-5: the same weights summed in another order differ by that)."""
    return float((errors < at_start * (1.0 - 1e-5)).float().mean())


def regulariser(composer, weights: list[float]) -> float:
    """The composer's α regulariser at constant weights (0 when its `reg` is 0)."""
    return float(composer.regulariser(torch.tensor(weights, dtype=torch.float32)))


def profile(composer, obs, actions, batches: int, batch_size: int, seed: int,
            grid=GRID, draws: int = 4) -> list[dict]:
    """One line per (path, skill, point): the mean ε-loss, its difference from the start
    (the new skill alone) with that difference's standard error over the batches, the
    share of the data's states whose own ε-error (mean of `draws` draws) is lower there
    than at the start — the states where any per-state weighting of the loss, such as
    advantage weights, could pull α toward this point — and the regulariser there."""
    skills = composer.skills
    new = len(skills) - 1
    start = [0.0] * new + [1.0]
    at_start = batch_losses(composer, obs, actions, start, batches, batch_size, seed)
    states_at_start = state_errors(composer, obs, actions, start, draws, batch_size, seed)
    lines = []
    for i, skill in enumerate(skills[:-1]):
        for path in ("added", "traded"):
            for x in grid:
                weights = list(start)
                weights[i] = x
                if path == "traded":
                    weights[new] = 1.0 - x
                if weights == start:  # the same draws give the start's values again
                    losses, states = at_start, states_at_start
                else:
                    losses = batch_losses(composer, obs, actions, weights, batches,
                                          batch_size, seed)
                    states = state_errors(composer, obs, actions, weights, draws,
                                          batch_size, seed)
                diff = losses - at_start
                lines.append({
                    "skill": skill, "path": path, "alpha": dict(zip(skills, weights)),
                    "eps_loss": round(float(losses.mean()), 5),
                    "minus_start": round(float(diff.mean()), 5),
                    "stderr": round(float(diff.std(unbiased=True)) / math.sqrt(batches), 5)
                    if batches > 1 else None,
                    "states_lowered": round(lowered_share(states, states_at_start), 4),
                    "regulariser": round(regulariser(composer, weights), 5),
                })
    return lines


def held_out(where: str, seed: int):
    """The dataset table of task TASK of stream file STREAM (`where` = "STREAM:TASK", paper
    scale) generated with data seed `seed`."""
    from tasks.generators.generator import generate
    from tasks.spec import load_stream

    path, _, name = where.rpartition(":")
    task = next((t for t in load_stream(path, "paper").tasks if t.name == name), None)
    if task is None:
        raise SystemExit(f"alpha_loss_profile: no task {name!r} in {path}")
    return generate(task.model_copy(update={"data": task.data.model_copy(update={"seed": seed})}))


def markdown(lines: list[dict]) -> str:
    """The profile of one or more composers (same skills' roles, same grid) on one or more
    data (each line's "data") as one table: per path and weight of the stored skill, for
    each data the ε-loss as mean ± std over composers and the share of states lowered,
    then the regulariser (the same for all)."""
    datas = list(dict.fromkeys(line["data"] for line in lines))
    rows: dict[tuple[str, float], dict[str, list[dict]]] = {}
    for line in lines:
        weight = list(line["alpha"].values())[0]
        rows.setdefault((line["path"], weight), {}).setdefault(line["data"], []).append(line)
    header = ["path", "α stored", "α new"]
    for data in datas:
        header += [f"ε-loss on {data} (mean ± std over composers)", "states lowered"]
    table = ["| " + " | ".join(header) + " | regulariser |",
             "| --- |" + " ---: |" * (len(header) + 0)]
    for (path, weight), by_data in rows.items():
        first = next(iter(by_data.values()))[0]
        cells = [path, f"{weight:.2f}", f"{list(first['alpha'].values())[-1]:.2f}"]
        for data in datas:
            same = by_data.get(data, [])
            loss = torch.tensor([line["eps_loss"] for line in same])
            lowered = torch.tensor([line["states_lowered"] for line in same])
            spread = float(loss.std(unbiased=False)) if len(same) > 1 else 0.0
            cells += [f"{float(loss.mean()):.4f} ± {spread:.4f}", f"{float(lowered.mean()):.3f}"]
        table.append("| " + " | ".join(cells) + f" | {first['regulariser']:.3f} |")
    return "\n".join(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--composer", required=True, nargs="+",
                        help="stored parameter-level composers (e.g. one per training seed)")
    parser.add_argument("--dataset", help="a stored dataset of the target task (e.g. the one "
                                          "the composers trained on)")
    parser.add_argument("--held-out", metavar="STREAM:TASK",
                        help="also (or instead) generate the episodes of TASK in the stream "
                             "file STREAM (its paper scale) with data seed --data-seed: "
                             "episodes the composers never trained on")
    parser.add_argument("--data-seed", type=int, default=1002)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--draws", type=int, default=4,
                        help="draws of t and ε per state for the per-state errors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true",
                        help="print one table over the composers instead of JSON lines")
    args = parser.parse_args(argv)
    if not (args.dataset or args.held_out):
        parser.error("give --dataset, --held-out or both")
    torch.set_num_threads(1)
    store = SkillStore(args.store)
    datas = {}
    if args.dataset:
        datas[args.dataset] = store.get_dataset(args.dataset)
    if args.held_out:
        datas[f"{args.held_out} seed {args.data_seed}"] = held_out(args.held_out, args.data_seed)
    lines = []
    for data_name, table in datas.items():
        arrays = to_arrays(table)
        obs, actions = torch.as_tensor(arrays["obs"]), torch.as_tensor(arrays["actions"])
        for name in args.composer:
            composer = load_composer(store, name)
            if composer.mode != "parameter":
                parser.error(f"{name} composes in mode {composer.mode!r}, not 'parameter'")
            for line in profile(composer, obs, actions, args.batches, args.batch_size,
                                args.seed, draws=args.draws):
                line = {"composer": name, "data": data_name, **line}
                lines.append(line)
                if not args.markdown:
                    print(json.dumps(line))
    if args.markdown:
        print(markdown(lines))


if __name__ == "__main__":
    main()
