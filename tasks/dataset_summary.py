"""What a stored dataset holds, episode by episode: `psec data show`.

Offline methods learn what their data cover, so a user who generated or imported a
dataset needs to see its spread before fitting on it: how many episodes, how long, the
returns (and the suite's normalised score), and for safe-RL data how the episodes split
by total cost around the task's cost threshold — the reward-cost frontier the DSRL
methods trade along (docs/RESULTS.md reads Car Run's data with it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from library.errors import PsecError
from tasks.dataset import dataset_meta, episode_totals, episodes

COLUMNS = ("rewards", "costs", "terminals", "timeouts", "episode")
"""The columns a summary reads (costs where the data have them): a caller may load only
these, not the states and actions."""

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
"""The points of each per-episode spread (min, quartiles, max)."""

_QUANTILE_NAMES = ("min", "25%", "median", "75%", "max")


@dataclass(frozen=True)
class Spread:
    """Quantiles of one per-episode quantity, in `QUANTILES` order, and its mean."""

    mean: float
    quantiles: tuple[float, ...]

    @classmethod
    def of(cls, values: np.ndarray) -> Spread:
        return cls(float(np.mean(values)),
                   tuple(float(q) for q in np.quantile(values, QUANTILES)))


@dataclass(frozen=True)
class CostBand:
    """The episodes whose total cost falls in one band, and their returns."""

    label: str
    episodes: int
    return_mean: float | None
    return_max: float | None
    score_mean: float | None


@dataclass(frozen=True)
class PolicyGroup:
    """The episodes one behaviour policy of a generated dataset collected."""

    policy: str
    episodes: int
    return_mean: float
    cost_mean: float | None
    score_mean: float | None


@dataclass(frozen=True)
class DatasetSummary:
    """Counts and per-episode spreads of one dataset (`summarise`)."""

    transitions: int
    episodes: int
    obs_dim: int
    act_dim: int
    suite: str | None
    env: str | None
    source: str | None
    terminals: int
    timeouts: int
    length: Spread
    returns: Spread
    scores: Spread | None
    """The suite's normalised score of each episode's return; None where the suite's
    score needs more than a return (Meta-World's success) or the data name no suite."""
    costs: Spread | None
    """None for data without a costs column."""
    cost_threshold: float | None
    cost_bands: tuple[CostBand, ...]
    policies: tuple[PolicyGroup, ...]
    """By behaviour policy, where the data record which one collected each episode (the
    generators' `episode_policy`), in order of first appearance; else empty."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(table: pa.Table, cost_threshold: float) -> DatasetSummary:
    """Summary of a canonical dataset table (all its columns, or only `COLUMNS`, with its
    schema's metadata); costs are banded into no cost, below `cost_threshold` and at or
    above it (DSRL's normalised cost ≤ 1 is the safe side)."""
    if not cost_threshold > 0:
        raise ValueError(f"cost threshold must be > 0, got {cost_threshold}")
    meta = dataset_meta(table)
    arrays = {key: table.column(key).combine_chunks().to_numpy(zero_copy_only=False)
              for key in COLUMNS if key in table.column_names}
    ids, returns, costs = episode_totals(arrays)
    returns_array, costs_array = np.asarray(returns), np.asarray(costs)
    lengths = np.array([len(episode["rewards"]) for episode in episodes(arrays)])
    scores = _scores(meta, returns_array)
    has_costs = "costs" in arrays
    bands = _cost_bands(returns_array, costs_array, scores, cost_threshold) if has_costs else ()
    return DatasetSummary(
        transitions=table.num_rows, episodes=len(returns), obs_dim=meta["obs_dim"],
        act_dim=meta["act_dim"], suite=meta.get("suite"), env=meta.get("env"),
        source=meta.get("source"), terminals=int(np.count_nonzero(arrays["terminals"])),
        timeouts=int(np.count_nonzero(arrays["timeouts"])), length=Spread.of(lengths),
        returns=Spread.of(returns_array),
        scores=None if scores is None else Spread.of(scores),
        costs=Spread.of(costs_array) if has_costs else None,
        cost_threshold=cost_threshold if has_costs else None, cost_bands=bands,
        policies=_policy_groups(meta.get("episode_policy"), ids, returns_array,
                                costs_array if has_costs else None, scores))


def _scores(meta: dict[str, Any], returns: np.ndarray) -> np.ndarray | None:
    """Each episode's normalised score from its return, where the suite gives one."""
    from tasks.suites import get_suite

    suite, env = meta.get("suite"), meta.get("env")
    if suite is None or env is None:
        return None
    try:
        score = get_suite(suite).score
        return np.array([score(env, value) for value in returns])
    except (ValueError, KeyError, PsecError):
        # Meta-World's score needs each episode's success; an env the suite does not know
        # (an imported file's name) has no reference returns.
        return None


def _cost_bands(returns: np.ndarray, costs: np.ndarray, scores: np.ndarray | None,
                threshold: float) -> tuple[CostBand, ...]:
    def band(label: str, chosen: np.ndarray) -> CostBand:
        if not chosen.any():
            return CostBand(label, 0, None, None, None)
        return CostBand(label, int(chosen.sum()), float(returns[chosen].mean()),
                        float(returns[chosen].max()),
                        None if scores is None else float(scores[chosen].mean()))

    return (band("no cost", costs == 0),
            band(f"0 < cost < {threshold:g}", (costs > 0) & (costs < threshold)),
            band(f"cost >= {threshold:g}", costs >= threshold))


def _policy_groups(labels: list[str] | None, ids: list[int], returns: np.ndarray,
                   costs: np.ndarray | None, scores: np.ndarray | None
                   ) -> tuple[PolicyGroup, ...]:
    """Episodes grouped by the policy that collected them; `labels` is indexed by
    episode id (a subset keeps its source's ids and list)."""
    if not labels or max(ids) >= len(labels):
        return ()
    of_episode = np.array([labels[i] for i in ids])
    groups = []
    for policy in dict.fromkeys(of_episode.tolist()):
        chosen = of_episode == policy
        groups.append(PolicyGroup(
            policy, int(chosen.sum()), float(returns[chosen].mean()),
            None if costs is None else float(costs[chosen].mean()),
            None if scores is None else float(scores[chosen].mean())))
    return tuple(groups)


def describe(name: str, summary: DatasetSummary) -> str:
    """The summary as a few lines of text and Markdown tables."""
    where = ", ".join(f"{key} {value}" for key, value in
                      (("suite", summary.suite), ("env", summary.env),
                       ("source", summary.source)) if value is not None)
    lines = [f"dataset {name}: {summary.transitions:,} transitions in {summary.episodes:,} "
             f"episodes ({where}); obs {summary.obs_dim}, actions {summary.act_dim}; "
             f"{summary.terminals:,} terminal and {summary.timeouts:,} timeout rows",
             "", "| per episode | " + " | ".join(_QUANTILE_NAMES) + " | mean |",
             "| --- |" + " ---: |" * (len(_QUANTILE_NAMES) + 1)]
    spreads = (("length", summary.length), ("return", summary.returns),
               ("score", summary.scores), ("cost", summary.costs))
    for label, spread in spreads:
        if spread is not None:
            cells = [_number(value) for value in (*spread.quantiles, spread.mean)]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if summary.cost_bands:
        lines += _episode_table(
            f"Episodes by total cost (threshold {summary.cost_threshold:g}: normalised cost "
            "= cost / threshold):", ("cost", "return mean", "return max", "score mean"),
            [(band.label, band.episodes, (band.return_mean, band.return_max, band.score_mean))
             for band in summary.cost_bands])
    if summary.policies:
        lines += _episode_table(
            "Episodes by the behaviour policy that collected them:",
            ("policy", "return mean", "cost mean", "score mean"),
            [(group.policy, group.episodes,
              (group.return_mean, group.cost_mean, group.score_mean))
             for group in summary.policies])
    return "\n".join(lines)


def _episode_table(title: str, columns: tuple[str, ...],
                   rows: list[tuple[str, int, tuple[float | None, ...]]]) -> list[str]:
    """A titled Markdown table of episode groups: label, episode count, then `columns[1:]`."""
    lines = ["", title, "", f"| {columns[0]} | episodes | " + " | ".join(columns[1:]) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for label, count, values in rows:
        cells = [_number(value) for value in values]
        lines.append(f"| {label} | {count:,} | " + " | ".join(cells) + " |")
    return lines


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"
