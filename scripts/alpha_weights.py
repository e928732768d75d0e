"""Where stored composers put their weight: α_i(s) of each composer as the store holds it.

For each composer named this loads it from the store (its base and skills) and computes,
per skill i, the mean and std of α_i(s) over the first 512 states of its task's data —
the statistics its fit logged at every step (`pipeline.stages.alpha_stats`, TensorBoard
tags `alpha/<skill>/mean|std` under the store's `runs/`), here from the stored weights,
so the table can be rerun from a clean clone, where committed stores hold no runs. A
store that does not hold the task's dataset (generated data are not kept in every
committed store) generates it again from the task's spec and takes it when its
fingerprint is the one the fit recorded; else it falls back to the last values its fit
logged, where the runs are there.
It prints Σ_i α_i (uniform α starts at 1), Σ_i |α_i|, the mean over skills of the spread
over states (0: α does not depend on the state), and the skills with the largest |α_i|.

    python scripts/alpha_weights.py --store stores/metaworld-unseen push-wall-psec push-wall-random
"""

from __future__ import annotations

import argparse
import sys

TOP = 4
"""Skills named per composer."""


def stored_alpha(store_uri: str, item: str) -> dict[str, float]:
    """`<skill>/mean` and `<skill>/std` of the stored composer `item` on its task's data
    (as its fit read it: the task's dataset, cut to its max_transitions); {} when the store
    holds no composer of that name."""
    from library.store import SkillStore
    from pipeline.acting import load_composer
    from pipeline.evaluation import stored_task
    from pipeline.plan import dataset_name
    from pipeline.stages import alpha_stats, fit_table
    from tasks.dataset import to_offline_data

    store = SkillStore(store_uri)
    if not store.exists(item) or store.entry(item).kind != "composer":
        return {}
    entry = store.entry(item)
    task = stored_task(entry, None)
    name = dataset_name(task)
    if store.has_dataset(name):
        table = fit_table(store, task, name)
    else:
        table = regenerated_table(task, entry.dataset_fingerprint, name)
    return alpha_stats(load_composer(store, item), to_offline_data(table).obs)


def regenerated_table(task, recorded: str | None, name: str):
    """The dataset `name` of a generated task, generated again from its spec (committed
    stores leave generated data out), taken only when its fingerprint is the one the
    composer's fit recorded; StoreError when the task does not generate its own data or
    they differ."""
    from library.errors import StoreError
    from tasks.dataset import fingerprint
    from tasks.generators.generator import generate

    if task.data.source != "generate":
        raise StoreError(f"no dataset named {name!r} in the store, and task {task.name!r} "
                         f"does not generate its own (data source {task.data.source!r})")
    table = generate(task)
    if recorded is None or fingerprint(table) != recorded:
        raise StoreError(f"dataset {name!r} generated again differs from the one the fit "
                         "recorded (its fingerprint)")
    return table


def logged_alpha(store_uri: str, item: str) -> dict[str, float]:
    """The last α statistics the fit of `item` logged under the store's runs ({} if none)."""
    from pipeline.tblog import item_runs, last_scalars

    runs = item_runs(store_uri, item)
    return last_scalars(store_uri, runs[0], prefix="alpha/") if runs else {}


def weights_row(store_uri: str, item: str) -> str:
    """One Markdown row of `item`'s α statistics."""
    from library.errors import StoreError

    try:
        values = stored_alpha(store_uri, item)
    except StoreError:  # the task's dataset is not in this store
        values = logged_alpha(store_uri, item)
        if not values:
            return f"| {item} | — | — | — | neither its task's data nor its run in the store |"
    means = {tag[: -len("/mean")]: v for tag, v in values.items() if tag.endswith("/mean")}
    spreads = [v for tag, v in values.items() if tag.endswith("/std")]
    if not means:
        return f"| {item} | — | — | — | not a stored composer |"
    top = sorted(means.items(), key=lambda pair: -abs(pair[1]))[:TOP]
    return (f"| {item} | {sum(means.values()):.2f} | {sum(map(abs, means.values())):.2f} | "
            f"{sum(spreads) / len(spreads):.2f} | "
            + ", ".join(f"{skill} {value:+.2f}" for skill, value in top) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="store holding the composers")
    parser.add_argument("items", nargs="+", help="composer names")
    args = parser.parse_args(argv)
    print(f"| composer | Σ α | Σ abs(α) | std over states | largest abs(α_i) (top {TOP}) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for item in args.items:
        print(weights_row(args.store, item))
    return 0


if __name__ == "__main__":
    sys.exit(main())
