"""Does a stored composer's α(s) move toward the safety skill near hazards (paper Fig. 5)?

A composer's α trace (`tune.alpha_trace`) follows one of its own episodes, and a composer
that never meets a hazard cannot show there how α(s) reacts to one. α(s) is a function of
the state alone, so this evaluates it on every state of the data its task was fitted on,
whose behaviour episodes do meet hazards, and groups the states by how far ahead the next
cost of their own episode is: at it (a cost at this step), 1–10 steps before it, 11–100,
more than 100, or none ahead. Per composer and skill it prints the mean α_i(s) of each
group and its spread over all states; a composer that leans toward the safety skill near
hazards has a larger safety α in the first groups than in the last. Where in an episode a
state lies can move α as well (a trace may follow the step rather than the hazard), so a
second table compares, for the composer's newest skill (the safety skill of a safe
composition), the states at a cost with those with none ahead within each quarter of the
episode. The first table's last column counts the states the composer trained on (its
subset of the data, `ComposerSpec.data`) and how many of them have a cost ahead: α(s)
learns nothing about hazards its training states do not reach.

`--plot PATH` draws, per composer, the newest skill's mean α(s) at each step of the
episode over the states at a cost and over those with no cost ahead.

    python scripts/alpha_near_hazards.py --store stores/dsrl-paper carrun-psec_a73a72f5
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hazard_neighbours import critic_table, steps_to_cost, table_arrays  # noqa: E402

BANDS = (("at a cost", 0, 0), ("1–10 before", 1, 10), ("11–100 before", 11, 100),
         ("> 100 before", 101, None))
"""State groups by steps to the next cost of their episode (low, high inclusive; None:
unbounded); the last group, no cost ahead, is added by `groups`."""

NO_COST_AHEAD = "no cost ahead"


def groups(to_cost: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks [N] of each band of BANDS and of NO_COST_AHEAD, in that order."""
    masks = {}
    for label, low, high in BANDS:
        masks[label] = (to_cost >= low) & ((to_cost <= high) if high is not None else True)
    masks[NO_COST_AHEAD] = to_cost < 0
    return masks


def steps_from_start(episodes: np.ndarray) -> np.ndarray:
    """Per transition, its position in its episode (0: the first) ([N] int)."""
    position = np.zeros(len(episodes), dtype=np.int64)
    for episode in np.unique(episodes):
        index = np.flatnonzero(episodes == episode)
        position[index] = np.arange(len(index))
    return position


def quarters(position: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, mask [N]) of each quarter of the longest episode's steps."""
    edges = np.linspace(0, position.max() + 1, 5).round().astype(int)
    return [(f"steps {low}–{high - 1}", (position >= low) & (position < high))
            for low, high in zip(edges[:-1], edges[1:])]


def within_quarters(alpha: np.ndarray, masks: dict[str, np.ndarray],
                    bands: list[tuple[str, np.ndarray]]) -> list[tuple[float, float]]:
    """Per quarter, (mean α at a cost, mean α with no cost ahead); NaN for no states."""
    at_cost, none_ahead = masks[BANDS[0][0]], masks[NO_COST_AHEAD]
    return [tuple(float(alpha[band & mask].mean()) if (band & mask).any() else float("nan")
                  for mask in (at_cost, none_ahead)) for _, band in bands]


def by_step(alpha: np.ndarray, position: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of alpha [N] over the states of `mask` at each episode step 0..max (NaN where
    none): [max position + 1]."""
    length = int(position.max()) + 1
    total = np.bincount(position[mask], weights=alpha[mask], minlength=length)
    count = np.bincount(position[mask], minlength=length)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot(path: str, curves: list[tuple[str, str, np.ndarray, np.ndarray]]) -> None:
    """One panel per composer (name, skill, mean α at a cost by step, with no cost ahead)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False,
                             sharey=True)
    for ax, (title, skill, at_cost, none_ahead) in zip(axes[0], curves):
        ax.plot(at_cost, color="tab:red", label="states at a cost")
        ax.plot(none_ahead, color="tab:green", label="no cost ahead")
        ax.axhline(0.0, color="grey", linewidth=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step of the episode")
        ax.set_ylabel(f"α of {skill}", fontsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def group_means(alpha: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of alpha [N] over each group's states (NaN for an empty group)."""
    return {label: float(alpha[mask].mean()) if mask.any() else float("nan")
            for label, mask in masks.items()}


def composer_alphas(composer, obs: np.ndarray, batch: int = 8192) -> np.ndarray:
    """α(s) of `composer` on raw states obs [N, S]: [N, k], k its skills."""
    import torch

    with torch.no_grad():
        return torch.cat([composer.alpha(torch.as_tensor(obs[i:i + batch]))
                          for i in range(0, len(obs), batch)]).numpy()


def composer_spec(store, name: str) -> dict:
    """Composer `name`'s entry in its task's spec ({} when the spec does not hold it)."""
    composers = (store.entry(name).task_spec or {}).get("composers") or []
    return next((c for c in composers if c.get("name") == name), {})


def trained_near_cost(table, spec: dict, name: str) -> str:
    """"<states> / <of them with a cost ahead>" of the subset of `table` that the composer
    `name` with spec `spec` trains on."""
    from tasks.spec_sections import ComposerData
    from tasks.subsets import composer_subset

    subset = composer_subset(table, ComposerData(**(spec.get("data") or {})), name)
    _, costs, episodes = table_arrays(subset)
    return f"{len(costs)} / {int((steps_to_cost(costs, episodes) >= 0).sum())}"


def alpha_start(spec: dict) -> str:
    """How a composer's α was set up, from its spec: mode, output/init, scale."""
    alpha = spec.get("alpha") or {}
    scale = alpha.get("scale", 1.0)
    return (f"{spec.get('mode', '?')} {alpha.get('output', '?')}/{alpha.get('init', '?')}"
            + (f"×{scale:g}" if scale != 1.0 else ""))


def main(argv: list[str] | None = None) -> int:
    from library.errors import StoreError
    from library.store import SkillStore
    from pipeline.acting import load_composer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="store holding the composers")
    parser.add_argument("composers", nargs="+", help="stored composers on tasks with costs")
    parser.add_argument("--plot", default=None, help="also draw α by step into this PNG")
    args = parser.parse_args(argv)
    store = SkillStore(args.store)
    header = ""
    labels = [label for label, _, _ in BANDS] + [NO_COST_AHEAD]
    newest_rows: list[str] = []
    newest_header = ""
    curves = []
    for name in args.composers:
        try:
            composer = load_composer(store, name)
            table = critic_table(store, name)
        except StoreError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        obs, costs, episodes = table_arrays(table)
        masks = groups(steps_to_cost(costs, episodes))
        counts = ", ".join(f"{label} {int(mask.sum())}" for label, mask in masks.items())
        if counts != header:  # another task's data: a table of its own
            print(f"{chr(10) if header else ''}{len(obs)} data states of {name}'s task, by "
                  f"steps to the next cost of their episode: {counts}\n")
            print("| composer | α | skill | " + " | ".join(labels)
                  + " | spread over states | trained on: states / with a cost ahead |")
            print("| --- | --- | --- | " + " | ".join("---:" for _ in labels)
                  + " | ---: | ---: |")
            header = counts
        alpha = composer_alphas(composer, obs)
        spec = composer_spec(store, name)
        start, trained = alpha_start(spec), trained_near_cost(table, spec, name)
        position = steps_from_start(episodes)
        bands = quarters(position)
        newest_header = newest_header or (
            "| composer | α | skill | " + " | ".join(label for label, _ in bands) + " |\n"
            + "| --- | --- | --- | " + " | ".join("---:" for _ in bands) + " |")
        pairs = within_quarters(alpha[:, -1], masks, bands)
        curves.append((f"{name}\n{start}", composer.skills[-1],
                       by_step(alpha[:, -1], position, masks[BANDS[0][0]]),
                       by_step(alpha[:, -1], position, masks[NO_COST_AHEAD])))
        newest_rows.append(f"| {name} | {start} | {composer.skills[-1]} | "
                           + " | ".join(f"{cost:+.2f} / {none:+.2f}" for cost, none in pairs)
                           + " |")
        for index, skill in enumerate(composer.skills):
            means = group_means(alpha[:, index], masks)
            print(f"| {name} | {start} | {skill} | "
                  + " | ".join(f"{means[label]:+.3f}" for label in labels)
                  + f" | {alpha[:, index].std():.3f} | {trained} |")
    print("\nThe newest skill's α(s) within each quarter of the episode: at a cost / no cost "
          "ahead\n")
    print(newest_header)
    print("\n".join(newest_rows))
    if args.plot:
        plot(args.plot, curves)
    return 0


if __name__ == "__main__":
    sys.exit(main())
