"""A safe-composition search's results in the layout of the paper's Table 1
(`layout: safe`; `psec tune SEARCH.yaml --results RESULTS.md` writes the section).

The paper (after FISOR) reports, per DSRL task, each method's normalised reward ↑ and
normalised cost ↓ (DSRL: episode cost / threshold; a policy is safe when it is below 1),
and their averages over the tasks. Here a row is a target (one env of
`configs/dsrl_bullet.yaml`) plus the average, a column a method, a cell
`reward / cost`:

* BC-All: the target's base (BC on the whole dataset) alone on the target
  (`controls: [single]`; fitted once, with the stream's seed);
* BC-Safe: method `bc`, BC from scratch on the composer's safe subset;
* FISOR: method `fisor`, a diffusion policy from scratch on the whole dataset weighted by
  FISOR's feasibility-guided objective (`reward+feasibility`), the candidate with the
  lowest safety Q kept at evaluation as for every policy with that critic;
* reward skill and safety skill alone: the stored reward skill (`controls: [single]`)
  and each trial's new skill, the safety skill (the composers' own skill);
* Fixed: the best start point of the constant α per target, "best" being the highest
  reward among the safe ones and the lowest cost when none is safe (the search tunes the
  fixed weights with the criterion of the table);
* NSEC, ASEC, PSEC: the composing methods; with several α choices in the search, a
  column per choice (the first unmarked, the others named by their α label).

A cell is the mean over training seeds (n given when not every seed ran) of each trial's
mean over evaluation episodes and seeds; the ± table below gives the std over training
seeds. Unsafe cells carry †; the best reward among the safe cells of a row is bold.
`<search>-alpha-<composer>….png` (`tune.table.trace_file`) shows α(s) over one episode
with the safety critic's V_h(s) and the per-step cost beneath (Fig. 5;
`tune.alpha_trace`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from library.names import BASE
from tasks.dataset import dataset_meta, episode_totals, to_arrays
from tasks.spec_sections import CRITIC_OBJECTIVES
from tasks.suites import get_suite
from tune.spec import SearchSpec, find_composer
from tune.table import base_budgets, collect, measured_line, section_tail
from tune.trials import alpha_label, composer_label, subset_dataset, variant_name

COLUMNS = {"bc-all": "BC-All", "bc": "BC-Safe", "fisor": "FISOR", "reward-skill": "Reward skill",
           "safety-skill": "Safety skill", "fixed": "Fixed", "nsec": "NSEC", "asec": "ASEC",
           "psec": "PSEC"}
"""Column key -> heading, in the table's order (baselines first, PSEC last as in the
paper). Keys that are search methods come from trials, the others from controls."""

SAFE = 1.0
"""Normalised cost at or below which a policy is safe (DSRL)."""


@dataclass
class Cell:
    """One method on one target: per-training-seed normalised reward and cost."""

    reward: list[float] = field(default_factory=list)
    """Normalised reward (DSRL), one value per training seed."""
    cost: list[float] = field(default_factory=list)
    """Normalised cost (episode cost / the target's threshold), one per training seed."""

    @property
    def measured(self) -> bool:
        return bool(self.reward) and bool(self.cost)

    @property
    def mean_reward(self) -> float:
        return _mean(self.reward)

    @property
    def mean_cost(self) -> float:
        return _mean(self.cost)

    @property
    def safe(self) -> bool:
        return self.measured and self.mean_cost <= SAFE


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _std(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def better(a: Cell, b: Cell) -> bool:
    """Whether `a` beats `b` by the safe criterion: a safe policy beats an unsafe one;
    among safe ones the higher reward wins, among unsafe ones the lower cost."""
    if not b.measured:
        return a.measured
    if not a.measured:
        return False
    if a.safe != b.safe:
        return a.safe
    return a.mean_reward > b.mean_reward if a.safe else a.mean_cost < b.mean_cost


@dataclass
class SafeTable:
    """Every cell of the table, and what the fixed baseline's tuning picked."""

    search: SearchSpec
    cells: dict[str, dict[str, Cell]]
    """Target label -> column key -> cell."""
    fixed_choice: dict[str, str] = field(default_factory=dict)
    """Target label -> the α start point of the Fixed cell."""
    thresholds: dict[str, float] = field(default_factory=dict)
    """Target label -> the cost threshold its costs are normalised by."""
    subsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Target label -> (episodes in the composer's subset, episodes in the dataset), for
    the targets whose BC-Safe subset is in the store."""
    subset_levels: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Target label -> (normalised reward, normalised cost) of the subset's own episodes,
    mean over them: what imitating the subset exactly would score."""
    bases: str | None = None
    """How far each target's base (BC-All) was trained, when the store was read."""

    @property
    def columns(self) -> list[str]:
        methods = set(self.search.methods)
        search = self.search
        composers = list(dict.fromkeys(
            composer_label(objective, data) for objective in search.composer_objectives
            for data in search.composer_data))
        keys = []
        for key in COLUMNS:
            if key in _COMPOSER_METHODS and key not in methods:
                continue
            if key == "safety-skill":
                keys += list(dict.fromkeys(_skill_key(o) for o in [None, *search.composer_objectives]))
            elif key in _COMPOSER_METHODS:
                alphas = search.alpha if key in _ALPHA_METHODS else [None]
                keys += [_key(key, alpha, composer, search)
                         for alpha in alphas for composer in composers]
            elif key in methods or key not in _METHOD_KEYS:
                keys.append(key)
        return keys


_METHOD_KEYS = {"bc", "fisor", "fixed", "nsec", "asec", "psec"}
_ALPHA_METHODS = {"nsec", "asec", "psec"}
"""Methods whose trials run at each of the search's α choices (Fixed has its own)."""
_COMPOSER_METHODS = {"fixed", *_ALPHA_METHODS}
"""Methods whose trials run at each of the search's composer weightings and data."""


def _key(method: str, alpha, composer: str | None, search: SearchSpec) -> str:
    """`<method>[@<α label>][#<composer label>]`: the α label where it is not the
    search's first choice, the composer's where the search changes how it trains."""
    key = method
    if alpha is not None and alpha != search.alpha[0]:
        key += f"@{alpha_label(alpha)}"
    return key if composer is None else f"{key}#{composer}"


def _skill_key(objective: str | None) -> str:
    """The column of the new (safety) skill a trial with composer weighting `objective`
    evaluates: one that needs critics has the skill fitted again with them."""
    return "safety-skill" if objective not in CRITIC_OBJECTIVES else \
        f"safety-skill#for composer {objective}"


def column_key(search: SearchSpec, point) -> str:
    """The column of a trial's cell: its method, marked with its α choice where that is
    not the search's first (composing methods) and with how its composer trains where the
    search changes that (`TrialPoint.composer_label`)."""
    alpha = point.alpha if point.method in _ALPHA_METHODS else None
    return _key(point.method, alpha, point.composer_label(), search)


def heading(key: str) -> str:
    """A column's heading: `PSEC`, or `PSEC (<α label>, composer <how>)` for another α
    choice or composer training."""
    rest, _, composer = key.partition("#")
    method, _, alpha = rest.partition("@")
    marks = [m for m in (alpha, composer and ("" if composer.startswith("for ") else
                                              "composer ") + composer) if m]
    return f"{COLUMNS[method]} ({', '.join(marks)})" if marks else COLUMNS[method]


def _is_trial_column(key: str) -> bool:
    method = key.partition("#")[0].partition("@")[0]
    return method in _METHOD_KEYS or method == "safety-skill"


def safe_table(search: SearchSpec, rows: list[dict], store=None) -> SafeTable:
    """Match the store's results rows to the search's points; normalise the costs. With
    `store`, the sizes of the stored safe subsets are read too."""
    by_metric = {metric: collect(search.model_copy(update={"metric": metric}), rows)
                 for metric in ("score", "cost")}
    scores, costs = by_metric["score"], by_metric["cost"]
    table = SafeTable(search, {t.label: {} for t in search.targets},
                      bases=base_budgets(search, scores.stream, store, "Bases (BC-All)"))
    for target in search.targets:
        task, composer = find_composer(scores.stream, target.composer, "targets")
        table.thresholds[target.label] = task.eval.cost_threshold
        subset = subset_dataset(task, None, composer)
        if store is not None and store.has_dataset(subset):
            data = store.get_dataset(subset)
            meta = dataset_meta(data)["composer_subset"]
            table.subsets[target.label] = (meta["episodes"], meta["of_episodes"])
            _, returns, episode_costs = episode_totals(to_arrays(data))
            suite, threshold = get_suite(task.suite), task.eval.cost_threshold
            table.subset_levels[target.label] = (
                _mean([suite.score(task.env, r) for r in returns]),
                _mean([suite.normalized_cost(task.env, c, threshold) for c in episode_costs]))
    fixed: dict[str, dict[str, Cell]] = {t.label: {} for t in search.targets}
    seen_skills: set[tuple[str, str]] = set()
    for score, cost in zip(scores.measured, costs.measured):
        point = score.point
        threshold = table.thresholds[point.target]
        if point.method in _METHOD_KEYS and score.value is not None and cost.value is not None:
            if point.method == "fixed":
                cell = fixed[point.target].setdefault(
                    (column_key(search, point), alpha_label(point.alpha)), Cell())
            else:
                cell = table.cells[point.target].setdefault(column_key(search, point), Cell())
            cell.reward.append(score.value)
            cell.cost.append(cost.value / threshold)
        # The new skill (the safety skill) is shared by every method with its seed; a
        # composer weighting that needs critics has it fitted again with them.
        key = (point.target, point.skill_tag())
        if score.skill_value is not None and cost.skill_value is not None and \
                key not in seen_skills:
            seen_skills.add(key)
            cell = table.cells[point.target].setdefault(_skill_key(point.objective), Cell())
            cell.reward.append(score.skill_value)
            cell.cost.append(cost.skill_value / threshold)
    for label, choices in fixed.items():
        best: dict[str, tuple[str, Cell]] = {}  # column -> (α start, its cell)
        for (column, alpha), cell in choices.items():
            if column not in best or better(cell, best[column][1]):
                best[column] = (alpha, cell)
        for column, (alpha, cell) in best.items():
            table.cells[label][column] = cell
            # The Fixed column's pick (the search's own composer training) is the one
            # the section names.
            if column == "fixed":
                table.fixed_choice[label] = alpha
    for target in search.targets:
        task, composer = find_composer(scores.stream, target.composer, "targets")
        stored = [s for s in composer.skills if s != BASE]
        controls = {"bc-all": task.base}
        if stored:  # the reward skill: the first stored skill the composer blends
            controls["reward-skill"] = variant_name(stored[0], f"lora{search.ranks[0]}")
        for key, item in controls.items():
            rewards = scores.controls.get((item, task.name), [])
            item_costs = costs.controls.get((item, task.name), [])
            if rewards and item_costs:
                # One fit (the stream's seed): its evaluation seeds make one value.
                table.cells[target.label][key] = Cell(
                    [_mean(rewards)], [_mean(item_costs) / table.thresholds[target.label]])
    return table


def _value(values: list[float], seeds: int) -> str:
    text = f"{_mean(values):.2f}"
    return text if len(values) >= seeds else f"{text} (n={len(values)})"


def table_lines(table: SafeTable) -> list[str]:
    """The Table 1 layout: `reward / cost` per target and method, then the average."""
    columns = table.columns
    seeds = len(table.search.seeds)
    head = ["| task | " + " | ".join(heading(c) for c in columns) + " |",
            "| --- |" + " :---: |" * len(columns)]
    lines = list(head)
    for label, cells in table.cells.items():
        safe = [c for c in columns if cells.get(c, Cell()).safe]
        best = max(safe, key=lambda c: cells[c].mean_reward) if safe else None
        row = []
        for column in columns:
            cell = cells.get(column)
            if cell is None or not cell.measured:
                row.append("—")
                continue
            reward = _value(cell.reward, 1 if column in ("bc-all", "reward-skill") else seeds)
            reward = f"**{reward}**" if column == best else reward
            mark = "" if cell.safe else " †"
            row.append(f"{reward} / {_mean(cell.cost):.2f}{mark}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    average = []
    for column in columns:
        cells = [table.cells[label].get(column, Cell()) for label in table.cells]
        if all(cell.measured for cell in cells):
            reward = _mean([c.mean_reward for c in cells])
            cost = _mean([c.mean_cost for c in cells])
            average.append(f"{reward:.2f} / {cost:.2f}{'' if cost <= SAFE else ' †'}")
        else:
            average.append("—")
    lines.append("| **average** | " + " | ".join(average) + " |")
    return lines


def spread_lines(table: SafeTable) -> list[str]:
    """Std over training seeds of each trial cell (`reward / cost`)."""
    columns = [c for c in table.columns if _is_trial_column(c)]
    lines = ["| task | " + " | ".join(heading(c) for c in columns) + " |",
             "| --- |" + " :---: |" * len(columns)]
    for label, cells in table.cells.items():
        row = []
        for column in columns:
            cell = cells.get(column)
            if cell is None or not cell.measured:
                row.append("—")
            elif len(cell.reward) < 2:  # one training seed has no spread to show
                row.append("one seed")
            else:
                row.append(f"± {_std(cell.reward):.2f} / ± {_std(cell.cost):.2f}")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return lines


def paper_lines(table: SafeTable) -> list[str]:
    """The search file's `paper:` figures in our table's layout: a row per target of ours
    (then the paper's own average over its tasks), a column per method of the paper."""
    paper = table.search.paper
    if not paper:
        return ["The paper's figures are not in this search file (`paper:` is empty), so "
                "none are shown beside ours."]
    methods = list(paper)
    lines = ["The paper's figures for the same tasks (`paper:` in the search file; "
             "reward / cost, its BC is our BC-All):", "",
             "| task | " + " | ".join(methods) + " |", "| --- |" + " :---: |" * len(methods)]
    for label in [*table.cells, "average"]:
        name = "**average** (the paper's, over all its tasks)" if label == "average" else label
        lines.append(f"| {name} | " + " | ".join(paper[m].get(label, "—") for m in methods)
                     + " |")
    return lines


def _level(table: SafeTable, label: str) -> str:
    if label not in table.subset_levels:
        return ""
    reward, cost = table.subset_levels[label]
    return f" (their own level: {reward:.2f} / {cost:.2f})"


def safe_section(table: SafeTable, records: Sequence[dict], command: str,
                 plots: list[tuple[str, str]], trace_note: str | None) -> str:
    """The search's section of the results file (between its `tune:` markers)."""
    search = table.search
    thresholds = sorted(set(table.thresholds.values()))
    lines = [f"<!-- tune:{search.name} -->", f"### Search `{search.name}` (Table 1 layout)", "",
             f"Search `{search.name}` (paper Table 1, Bullet-Safety-Gym). Regenerate: "
             f"`{command}` on a fresh store (`--table-only` rewrites this section from the "
             "store as it is).", ""]
    measured = sum(cell.measured for cells in table.cells.values() for cell in cells.values())
    lines.append(measured_line(records, "the datasets, base and reward skill", measured))
    lines += ["", "Cells: normalised reward ↑ / normalised cost ↓ (DSRL: episode cost / "
              f"threshold {', '.join(f'{t:g}' for t in thresholds)}; † unsafe, cost > 1; bold: "
              "the best reward among the safe cells of the row), mean over training seeds "
              f"{search.seeds} of each trial's mean over its evaluation episodes. BC-All and "
              "the reward skill are fitted once (the stream's seed).", ""]
    lines += table_lines(table) + [""]
    if len(search.alpha) > 1:
        lines += [f"NSEC, ASEC and PSEC unmarked: α {alpha_label(search.alpha[0])}; the "
                  "marked columns name their α choice.", ""]
    lines += paper_lines(table) + [""]
    if table.fixed_choice:
        lines += ["Fixed: the start point of the constant α picked per task (then trained): "
                  + "; ".join(f"{label}: {alpha}" for label, alpha in table.fixed_choice.items())
                  + ".", ""]
    if table.bases:
        lines += [table.bases, ""]
    if table.subsets:
        lines += ["The composers and BC-Safe train on the safe subset: "
                  + "; ".join(f"{label}: {kept} of {total} episodes" + _level(table, label)
                              for label, (kept, total) in table.subsets.items()) + ".", ""]
    lines += ["Std over training seeds:", ""] + spread_lines(table) + [""]
    return "\n".join(lines + section_tail(search.name, plots, trace_note)) + "\n"
