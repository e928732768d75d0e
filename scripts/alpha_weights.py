"""Where trained composers put their weight: α_i(s) at the end of each composer's training.

Every composer fit logs, per stored skill i, the mean and std over 512 training states of
α_i(s) (`pipeline.stages.alpha_stats`, TensorBoard tags `alpha/<skill>/mean|std` under the
store's `runs/`). For each composer named this prints the last logged values: Σ_i α_i
(uniform α starts at 1), Σ_i |α_i|, the mean over skills of the spread over states (0: α
does not depend on the state), and the skills with the largest |α_i|.

    python scripts/alpha_weights.py --store stores/metaworld-unseen push-wall-psec push-wall-random
"""

from __future__ import annotations

import argparse
import sys

from pipeline.tblog import item_runs, last_scalars

TOP = 4
"""Skills named per composer."""


def weights_row(store_uri: str, item: str) -> str:
    """One Markdown row of `item`'s final α statistics (from its first run: a composer is
    fitted once per store)."""
    runs = item_runs(store_uri, item)
    values = last_scalars(store_uri, runs[0], prefix="alpha/") if runs else {}
    means = {tag[: -len("/mean")]: v for tag, v in values.items() if tag.endswith("/mean")}
    spreads = [v for tag, v in values.items() if tag.endswith("/std")]
    if not means:
        return f"| {item} | — | — | — | no α logged |"
    top = sorted(means.items(), key=lambda pair: -abs(pair[1]))[:TOP]
    return (f"| {item} | {sum(means.values()):.2f} | {sum(map(abs, means.values())):.2f} | "
            f"{sum(spreads) / len(spreads):.2f} | "
            + ", ".join(f"{skill} {value:+.2f}" for skill, value in top) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="local store holding the composers")
    parser.add_argument("items", nargs="+", help="composer names")
    args = parser.parse_args(argv)
    print(f"| composer | Σ α | Σ abs(α) | std over states | largest abs(α_i) (top {TOP}) |")
    print("| --- | ---: | ---: | ---: | --- |")
    for item in args.items:
        print(weights_row(args.store, item))
    return 0


if __name__ == "__main__":
    sys.exit(main())
