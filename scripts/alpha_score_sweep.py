"""Does any constant blend of base and skill beat both? Score and training loss along α.

A parameter-level composer over a base and its task's new skill acts with the layers
W0 + α(s)·s·B A. This holds α constant — the new skill's weight c on a grid, every other
composed skill at 0; c = 0 is the base alone, c = 1 the skill alone — and for each c

* rolls the policy out on the composer's task exactly as the task's evaluation does (its
  eval seeds and episodes per seed, its candidates per state ranked by the task's critic:
  the same episode seeds and noise as every other evaluation of that task), and
* computes the composer's own training loss there: the task's objective's weighted
  ε-loss on the task's dataset (advantage weights from the task's IQL critics) and the
  composer's α regulariser, on the same batches and draws of t and ε for every c (common
  random numbers).

If the best score lies at some c strictly between 0 and 1 and the loss is lowest at
another, the objective — not the parameterisation — is what keeps a trained composer away
from the better blend; if no c beats both ends, blending the two in parameter space has
nothing to add on this task, whatever the composer learns.

    python scripts/alpha_score_sweep.py --store stores/d4rl-shift-paper \
        --composer walker2d-friction-medium-psec_785ff105 --grid 0 0.25 0.5 0.75 1 --workers 2

`--candidates 1` rolls out one sample per state (no selection by the critic).

One line per composer and c goes to stdout as JSON as it is measured; `--markdown` ends
with one table over the composers (mean ± std over composers, i.e. training seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack

import torch

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def _loaded(store_uri: str, composer_name: str, candidates: int | None = None):
    """(the composer with its skills loaded, its task spec — with `candidates` actions per
    state when given — and the task's critics: (IQL, feasibility), either None)."""
    from library.serialization import critics_from_item, split_item
    from library.store import SkillStore
    from pipeline.acting import load_composer
    from pipeline.evaluation import stored_task

    store = SkillStore(store_uri)
    composer = load_composer(store, composer_name)
    if composer.mode != "parameter":
        raise SystemExit(f"alpha_score_sweep: {composer_name!r} composes in {composer.mode!r} "
                         "mode; constant layer weights apply to parameter-level composers only")
    task = stored_task(store.entry(composer_name), None, candidates)
    if not store.exists(task.name):
        raise SystemExit(f"alpha_score_sweep: the task's skill {task.name!r} (its critics) is "
                         "not in the store")
    config, tensors = store.load(task.name)
    critics = critics_from_item(config, split_item(tensors)[1], composer.policy.normalizer)
    return composer, task, critics


def _weights(skills: list[str], c: float) -> torch.Tensor:
    """Constant layer weights: the new skill (the last) at c, every other skill at 0."""
    weights = torch.zeros(len(skills))
    weights[-1] = c
    return weights


def score_at(store_uri: str, composer_name: str, c: float, seed: int,
             candidates: int | None = None) -> dict:
    """The task's evaluation of eval seed `seed` (its episodes, side by side) with the new
    skill's weight held at c — `candidates` actions per state when given, else the task's —
    as tasks.evaluation.summarise's statistics."""
    from library.diffusion import select_action
    from library.lora import use_skills
    from pipeline.acting import Acting, candidate_ranking
    from pipeline.evaluation import roll_with
    from tasks.evaluation import summarise
    from tasks.suites import get_suite

    torch.set_num_threads(1)
    composer, task, (iql, feasibility) = _loaded(store_uri, composer_name, candidates)
    policy, skills = composer.policy, composer.skills
    weights = _weights(skills, c)
    q_fn, minimize = candidate_ranking(iql, feasibility)
    n = task.eval.n_candidates

    def sample(obs: torch.Tensor, noise) -> torch.Tensor:
        with use_skills(policy, skills, weights):
            return select_action(lambda o: policy.sample(o, noise), obs, n, q_fn=q_fn,
                                 minimize=minimize)

    act = Acting(sample, seed, n if q_fn is not None else 1)
    episodes = roll_with(act, task, seed, 0, task.eval.episodes)
    return summarise(episodes, get_suite(task.suite), task.env, task.eval.cost_threshold)


def losses_at(store_uri: str, composer_name: str, dataset: str, grid: list[float],
              batches: int, batch_size: int, seed: int) -> dict[float, dict[str, float]]:
    """Per c: the weighted ε-loss (the composer's objective without its regulariser), the
    plain ε-loss and the regulariser, on the same batches and draws for every c."""
    from library.lora import use_skills
    from library.store import SkillStore
    from library.weighting import WeightingConfig, make_weighting
    from pipeline.stages import fit_table
    from tasks.dataset import to_arrays

    torch.set_num_threads(1)
    composer, task, (iql, feasibility) = _loaded(store_uri, composer_name)
    arrays = to_arrays(fit_table(SkillStore(store_uri), task, dataset))
    obs, actions = torch.as_tensor(arrays["obs"]), torch.as_tensor(arrays["actions"])
    # The objective the composer trains by (TaskSpec.composer_objective), as its fit.
    objective = next((task.composer_objective(spec) for spec in task.composers
                      if spec.name == composer_name), task.objective)
    weigh = make_weighting(objective, iql, feasibility, WeightingConfig(beta=task.critic.beta))
    policy, skills = composer.policy, composer.skills
    out = {}
    for c in grid:
        g = torch.Generator().manual_seed(seed)
        weighted, plain = [], []
        with torch.no_grad(), use_skills(policy, skills, _weights(skills, c)):
            for _ in range(batches):
                rows = torch.randint(0, obs.shape[0], (batch_size,), generator=g)
                batch = {"obs": obs[rows], "actions": actions[rows]}
                terms = policy.loss(batch["obs"], batch["actions"], weights=weigh(batch),
                                    generator=g)
                weighted.append(float(terms["loss"]))
                plain.append(float(terms["mse"]))
        out[c] = {"weighted_eps_loss": sum(weighted) / batches,
                  "eps_loss": sum(plain) / batches,
                  "regulariser": float(composer.regulariser(_weights(skills, c)))}
    return out


def _mean_std(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}"


def markdown(lines: list[dict], grid: list[float]) -> str:
    """One row per c: score (mean over eval seeds, then mean ± std over composers), mean
    episode length, and the losses (mean over composers)."""
    table = ["| α of the new skill | score | episode length | weighted ε-loss | ε-loss | regulariser |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for c in grid:
        rows = [line for line in lines if line["alpha"] == c]
        if not rows:
            continue
        mean = {key: sum(r[key] for r in rows) / len(rows)
                for key in ("length", "weighted_eps_loss", "eps_loss", "regulariser")}
        table.append(f"| {c:.2f} | {_mean_std([r['score'] for r in rows])} | "
                     f"{mean['length']:.0f} | {mean['weighted_eps_loss']:.4f} | "
                     f"{mean['eps_loss']:.4f} | {mean['regulariser']:.3f} |")
    return "\n".join(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="local store holding the composers")
    parser.add_argument("--composer", required=True, nargs="+",
                        help="parameter-level composers (e.g. one per training seed)")
    parser.add_argument("--dataset", help="the stored dataset the composers trained on "
                                          "(default: the task's, as a fit names it)")
    parser.add_argument("--grid", type=float, nargs="+", default=list(GRID),
                        help="weights of the new skill (0: the base alone, 1: the skill alone)")
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0, help="seed of the loss's batches and draws")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes rolling out side by side (one thread each); 1: "
                             "every rollout in this process")
    parser.add_argument("--candidates", type=int,
                        help="actions sampled per state, the critic keeping the best "
                             "(default: the task's eval.n_candidates; 1: no selection)")
    parser.add_argument("--markdown", action="store_true",
                        help="end with one table over the composers")
    args = parser.parse_args(argv)
    import multiprocessing

    from library.store import SkillStore
    from pipeline.evaluation import stored_task
    from pipeline.plan import dataset_name

    store = SkillStore(args.store)
    tasks = {name: stored_task(store.entry(name), None) for name in args.composer}
    jobs = [(name, c, seed) for name in args.composer for c in args.grid
            for seed in tasks[name].eval.seeds]
    lines = []
    with ExitStack() as stack:
        if args.workers > 1:  # every rollout queued now; the losses run here meanwhile
            pool = stack.enter_context(ProcessPoolExecutor(
                args.workers, mp_context=multiprocessing.get_context("spawn")))
            futures = {job: pool.submit(score_at, args.store, *job, args.candidates) for job in jobs}
            score = lambda job: futures[job].result()  # noqa: E731
        else:
            score = lambda job: score_at(args.store, *job, args.candidates)  # noqa: E731
        for name in args.composer:
            dataset = args.dataset or dataset_name(tasks[name])
            losses = losses_at(args.store, name, dataset, args.grid, args.batches,
                               args.batch_size, args.seed)
            for c in args.grid:
                stats = [score((name, c, seed)) for seed in tasks[name].eval.seeds]
                line = {"composer": name, "alpha": c,
                        "score": sum(s["score_mean"] for s in stats) / len(stats),
                        "return": sum(s["return_mean"] for s in stats) / len(stats),
                        "length": sum(s["length_mean"] for s in stats) / len(stats),
                        "per_seed": [round(s["score_mean"], 2) for s in stats],
                        **{k: round(v, 5) for k, v in losses[c].items()}}
                lines.append(line)
                print(json.dumps(line), flush=True)
    if args.markdown:
        print(markdown(lines, args.grid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
