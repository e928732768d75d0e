"""Where a feasibility critic's V_h(s) comes from along a composer's own episode.

V_h(s) > 0 says "a violation ahead that no in-data action avoids". On a safety task this
rolls out one episode of a stored composer as its α trace does (`tune.alpha_trace.trace`,
64 candidates ranked by the safety critic) and, every `--every` steps, compares V_h of the
visited state with the `--k` nearest states of the data the critic was fitted on (the
composer's task's dataset; distance in units of the data's per-dimension std): how far
they are, what share of them had a cost later in their own episode, and the critic's
V_h on them. Near neighbours with a cost ahead mean the critic reports the behaviour
data (V_h > 0 is in-distribution); distant neighbours whose V_h differs from the state's
mean it extrapolates. Then, over the data states with no cost ahead, the share the critic
calls infeasible by how many steps are left in their episode.

    python scripts/hazard_neighbours.py --store stores/dsrl-paper carrun-psec_a73a72f5
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def steps_to_cost(costs: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """Per transition, steps until the next transition of its episode with a cost (0: a cost
    at this one), or -1 when none follows in its episode ([N] int)."""
    steps = np.full(len(costs), -1, dtype=np.int64)
    for episode in np.unique(episodes):
        index = np.flatnonzero(episodes == episode)
        costly = np.flatnonzero(costs[index] > 0)
        if len(costly):
            # The first costly position at or after each position (searchsorted, left).
            following = np.searchsorted(costly, np.arange(len(index)))
            ahead = following < len(costly)
            steps[index[ahead]] = costly[following[ahead]] - np.flatnonzero(ahead)
    return steps


def cost_ahead(costs: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """Per transition, whether its episode has a cost at this step or later (bool [N])."""
    return steps_to_cost(costs, episodes) >= 0


def neighbour_rows(states: np.ndarray, hazard: np.ndarray, data_obs: np.ndarray,
                   data_hazard: np.ndarray, ahead: np.ndarray, every: int, k: int
                   ) -> list[tuple[int, float, float, float, float]]:
    """(step, V_h(s_t), mean distance of the k nearest data states in data-std units, their
    share with a cost ahead, their mean V_h) every `every` steps of an episode."""
    scale = data_obs.std(axis=0) + 1e-6
    rows = []
    for step in range(0, len(states), every):
        distance = np.linalg.norm((data_obs - states[step]) / scale, axis=1)
        nearest = np.argsort(distance)[:k]
        rows.append((step, float(hazard[step]), float(distance[nearest].mean()),
                     float(ahead[nearest].mean()), float(data_hazard[nearest].mean())))
    return rows


def steps_to_end(episodes: np.ndarray) -> np.ndarray:
    """Per transition, how many transitions of its episode follow it (0: its last)."""
    left = np.zeros(len(episodes), dtype=np.int64)
    for episode in np.unique(episodes):
        index = np.flatnonzero(episodes == episode)
        left[index] = np.arange(len(index))[::-1]
    return left


def end_rows(data_hazard: np.ndarray, ahead: np.ndarray, left: np.ndarray,
             bounds: tuple[int, ...] = (0, 10, 50, 100)) -> list[tuple[str, int, float]]:
    """(steps before the episode's end, states, share with V_h > 0) over the data states
    with no cost ahead, by how close to their episode's end they are: a critic that
    bootstraps past the end (timeouts are not absorbing here) shows it there."""
    rows = []
    edges = list(bounds) + [int(left.max()) + 1]
    for low, high in zip(edges[:-1], edges[1:]):
        mask = ~ahead & (left >= low) & (left < high)
        if mask.any():
            rows.append((f"{low}–{high - 1}", int(mask.sum()), float((data_hazard[mask] > 0).mean())))
    return rows


def critic_table(store, name: str):
    """The dataset composer `name`'s feasibility critic was fitted on (a pyarrow table with
    costs): its task's, as that task's fit read it."""
    from library.errors import StoreError
    from pipeline.evaluation import stored_task
    from pipeline.plan import dataset_name
    from pipeline.stages import fit_table

    task_name = (store.entry(name).task_spec or {}).get("name")
    if not task_name or not store.exists(task_name):
        raise StoreError(f"composer {name!r} has no stored task item holding its critics")
    task = stored_task(store.entry(task_name), None)
    table = fit_table(store, task, dataset_name(task))
    if "costs" not in table.column_names:
        raise StoreError(f"the data of task {task.name!r} record no costs")
    return table


def table_arrays(table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(obs [N, S] float32, costs [N], episodes [N]) of a dataset table with costs."""
    obs = np.stack(table.column("obs").to_numpy(zero_copy_only=False)).astype(np.float32)
    return (obs, table.column("costs").to_numpy(), table.column("episode").to_numpy())


def critic_data(store, name: str):
    """(obs, costs, episodes) of `critic_table(store, name)`."""
    return table_arrays(critic_table(store, name))


def main(argv: list[str] | None = None) -> int:
    import torch

    from library.errors import StoreError
    from library.store import SkillStore
    from pipeline.acting import load_composer
    from pipeline.evaluation import stored_task
    from tune.alpha_trace import feasibility_critic, trace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="store holding the composer")
    parser.add_argument("composer", help="a stored composer on a task with a safety critic")
    parser.add_argument("--seed", type=int, default=0, help="episode seed (0)")
    parser.add_argument("--every", type=int, default=25, help="steps between rows (25)")
    parser.add_argument("--k", type=int, default=50, help="nearest data states (50)")
    args = parser.parse_args(argv)
    store = SkillStore(args.store)
    try:
        critic = feasibility_critic(store, args.composer, load_composer(store, args.composer))
        if critic is None:
            raise StoreError(f"the task of {args.composer!r} has no feasibility critic")
        obs, costs, episodes = critic_data(store, args.composer)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = trace(store, args.composer, stored_task(store.entry(args.composer), None), args.seed)
    with torch.no_grad():
        data_hazard = torch.cat([critic.value(torch.as_tensor(obs[i:i + 8192])).reshape(-1)
                                 for i in range(0, len(obs), 8192)]).numpy()
    ahead = cost_ahead(costs, episodes)
    rows = neighbour_rows(run.states, run.hazard, obs, data_hazard, ahead, args.every, args.k)
    print(f"{args.composer}, episode seed {args.seed}: {len(run.states)} steps, cost "
          f"{run.costs.sum():.0f}, V_h(s) > 0 on {int((run.hazard > 0).sum())}; "
          f"{len(obs)} data states")
    print(f"| step | V_h(s_t) | {args.k} nearest data states: distance (std) | "
          "share with a cost ahead | their V_h |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for step, hazard, distance, share, neighbours in rows:
        print(f"| {step} | {hazard:+.2f} | {distance:.2f} | {share:.2f} | {neighbours:+.2f} |")
    print("\nData states with no cost ahead, by steps left in their episode:\n")
    print("| steps to the episode's end | states | share with V_h > 0 |")
    print("| --- | ---: | ---: |")
    for band, count, share in end_rows(data_hazard, ahead, steps_to_end(episodes)):
        print(f"| {band} | {count} | {share:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
