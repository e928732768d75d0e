"""Where a critic weighting puts its weight on a task's data, before a composer trains with it.

A composer trained with a sample weighting (a search's `composer_objectives`, e.g. FISOR's
`reward+feasibility`) imitates the data's actions in proportion to their weights. This
evaluates the weighting on every transition of the data a stored composer's task was
fitted on, with the critics of that task (its skill item) and, for reward critics the
task does not hold, those of another stored item fitted on the same behaviour data
(`--reward-critics`, e.g. the reward skill), at the task's reward temperature
(`critic.beta`). It prints the effective sample size, the share of feasible states and of
the weight they carry, then per behaviour policy (the generators' `episode_policy`) and per
group of states by the next cost of their episode (`alpha_near_hazards.groups`): the
states, their feasible share, their share of the total weight and their mean weight.
Nothing is trained; a weighting whose weight never reaches the states before a hazard
cannot teach α(s) anything there.

    python scripts/weight_shares.py --store stores/dsrl-paper carrun-psec_a73a72f5 \\
        --reward-critics carrun-reward_lora8
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from alpha_near_hazards import groups  # noqa: E402
from hazard_neighbours import critic_table, steps_to_cost  # noqa: E402

CHUNK = 8192
"""Transitions per critic pass."""


def share_rows(weights: np.ndarray, feasible: np.ndarray, masks: dict[str, np.ndarray]
               ) -> list[tuple[str, int, float, float, float]]:
    """(label, states, feasible share, share of the total weight, mean weight) per mask."""
    total = weights.sum()
    return [(label, int(mask.sum()), float(feasible[mask].mean()) if mask.any() else np.nan,
             float(weights[mask].sum() / total), float(weights[mask].mean()) if mask.any()
             else np.nan) for label, mask in masks.items()]


def effective_share(weights: np.ndarray) -> float:
    """Effective sample size of the weights as a share of the transitions (1: uniform)."""
    return float(weights.sum() ** 2 / (weights ** 2).sum() / len(weights))


def _table(title: str, rows) -> list[str]:
    lines = [f"| {title} | states | feasible | weight share | mean weight |",
             "| --- | ---: | ---: | ---: | ---: |"]
    return lines + [f"| {label} | {n} | {feasible:.2f} | {share:.3f} | {mean:.2f} |"
                    for label, n, feasible, share, mean in rows]


def main(argv: list[str] | None = None) -> int:
    import torch

    from library.errors import PsecError, StoreError
    from library.serialization import critics_from_item, split_item
    from library.store import SkillStore
    from library.weighting import WeightingConfig, make_weighting
    from pipeline.acting import load_composer
    from pipeline.evaluation import stored_task
    from tasks.dataset import dataset_meta
    from tune.alpha_trace import task_critics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="store holding the composer")
    parser.add_argument("composer", help="a stored composer: its task's data and critics")
    parser.add_argument("--weighting", default="reward+feasibility",
                        help="the weighting to evaluate (reward+feasibility)")
    parser.add_argument("--reward-critics", default=None,
                        help="stored item whose IQL critics stand in where the task has none")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    store = SkillStore(args.store)
    try:
        composer = load_composer(store, args.composer)
        task_name = (store.entry(args.composer).task_spec or {}).get("name")
        iql, feasibility = task_critics(store, args.composer, composer)
        if iql is None and args.reward_critics is not None:
            other, other_tensors = store.load(args.reward_critics)
            iql = critics_from_item(other, split_item(other_tensors)[1],
                                    composer.policy.normalizer)[0]
            if iql is None:
                raise StoreError(f"item {args.reward_critics!r} holds no reward critics")
        beta = stored_task(store.entry(task_name), None).critic.beta
        weigh = make_weighting(args.weighting, iql, feasibility, WeightingConfig(beta=beta))
        table = critic_table(store, args.composer)
    except PsecError as error:
        print(f"weight_shares: {error}", file=sys.stderr)
        return 2
    column = lambda name: np.stack(table.column(name).to_numpy(zero_copy_only=False))  # noqa: E731
    obs = torch.as_tensor(column("obs").astype(np.float32))
    actions = torch.as_tensor(column("actions").astype(np.float32))
    costs, episodes = table.column("costs").to_numpy(), table.column("episode").to_numpy()
    weights, feasible = [], []
    with torch.no_grad():
        for start in range(0, len(obs), CHUNK):
            batch = {"obs": obs[start:start + CHUNK], "actions": actions[start:start + CHUNK]}
            weights.append(weigh(batch).numpy())
            feasible.append(feasibility.feasible(batch["obs"]).numpy() if feasibility
                            is not None else np.ones(len(batch["obs"]), bool))
    weights, feasible = np.concatenate(weights), np.concatenate(feasible)
    print(f"{args.weighting} weights on the {len(weights)} transitions of task {task_name!r} "
          f"(β {beta:g}): effective sample size {effective_share(weights):.3f} of them; "
          f"feasible states {feasible.mean():.3f}, carrying {weights[feasible].sum() / weights.sum():.3f} "
          "of the weight.\n")
    labels = dataset_meta(table).get("episode_policy")
    if labels is not None:
        policy = np.asarray(labels)[episodes]
        masks = {label: policy == label for label in dict.fromkeys(labels)}
        print("\n".join(_table("behaviour policy", share_rows(weights, feasible, masks))) + "\n")
    masks = groups(steps_to_cost(costs, episodes))
    print("\n".join(_table("states by the next cost", share_rows(weights, feasible, masks))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
