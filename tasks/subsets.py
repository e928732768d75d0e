"""The part of a task's dataset one composer trains on (`ComposerSpec.data`).

The paper trains composers on less data than the skills they compose: the safe
near-expert subset of DSRL (top trajectories by reward among the low-cost ones) and
10% of an unseen Meta-World task's data for few-shot composition. Whole episodes are
kept, never single transitions, so returns and costs stay those of real episodes.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from library.errors import DataError
from tasks.dataset import dataset_meta, episode_totals, to_arrays, to_table
from tasks.spec_sections import ComposerData


def composer_subset(table: pa.Table, data: ComposerData, composer: str) -> pa.Table:
    """Rows of `table` selected by `data`, in their original order.

    Order of the filters: episodes with total cost at most `max_episode_cost`, then the
    `top_episodes` of those by return (ties keep dataset order), then the first
    `fraction` of what is left (at least one episode). DataError, naming `composer`, if
    no episode qualifies."""
    if data.selects_all:
        return table
    arrays = to_arrays(table)
    ids, returns, costs = episode_totals(arrays)
    chosen = list(range(len(ids)))
    if data.max_episode_cost is not None:
        chosen = [i for i in chosen if costs[i] <= data.max_episode_cost]
        if not chosen:
            raise DataError(f"composer {composer!r}: no episode of the dataset has a total "
                            f"cost <= {data.max_episode_cost} (lowest: {min(costs):.3g})")
    if data.top_episodes is not None:
        chosen = sorted(sorted(chosen, key=lambda i: -returns[i])[:data.top_episodes])
    if data.fraction < 1.0:
        chosen = chosen[:max(1, math.ceil(data.fraction * len(chosen)))]
    keep = np.isin(arrays["episode"], [ids[i] for i in chosen])
    subset = {key: value[keep] for key, value in arrays.items()}
    meta = dataset_meta(table) | {"composer_subset": data.model_dump() | {
        "episodes": len(chosen), "of_episodes": len(ids)}}
    return to_table(subset, meta)
