"""From the store's results table to a search's section of docs/RESULTS.md, with plots.

A trial's rows carry the tags `search` and `trial` (the point's tag; older rows only the
stream name `<search>_<tag>`); the search file enumerates its points again, so every row
is matched to its method, target, rank, data size, α choice and training seed without
parsing names. A trial's value is
the mean over evaluation seeds of the search's metric for its main item (composer, or
scratch policy); a cell is the mean ± std over training seeds of those values.

The section holds, as the search's axes call for:

* the method table in the paper's layout (rows PSEC, PSEC (MLP), NSEC, ASEC, Scratch,
  Fixed; a column per target), with the paper's figures beside it when the search file
  gives them. Fixed is the best of its start points per target (the search tunes it;
  the winner is named), every other row is one configuration: nothing is picked on the
  evaluation score to favour a method;
* the controls a composition claim is made against (docs/ARCHITECTURE.md): the new
  skill alone, every stored skill and the base alone (`controls: [single]`), uniform α (method `uniform`),
  a random-LoRA bank (method `random`);
* by training seed, per target: every configuration's value (each fixed start point
  too) and its gap to its own new skill alone at the same seed;
* `<search>-ranks.png` (rank ablation, MLP as a reference line), `<search>-data.png`
  (score against trajectories) and `<search>-alpha-<composer>….png` (α(s) over one
  episode, one per `alpha_trace` entry: `trace_file`);
* the command that regenerates it, the machine and the wall time of the search.

Sections are delimited by `<!-- tune:<search> -->` markers, so each search rewrites its
own section and leaves the rest of the file alone.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from library.errors import PsecError
from library.names import BASE
from library.store import SkillStore
from tasks.spec import StreamSpec, TaskSpec
from tune.search import search_records
from tune.spec import (
    FROM_SCRATCH,
    AlphaTraceSpec,
    SearchSpec,
    TargetSpec,
    find_composer,
    load_search,
)
from tune.trials import (
    TrialPoint,
    alpha_file_tag,
    alpha_label,
    enumerate_points,
    skill_item,
    stream_name,
    variant_name,
)

ROW_LABELS = {"psec": "PSEC", "mlp": "PSEC (MLP)", "nsec": "NSEC", "asec": "ASEC",
              "scratch": "Scratch", "fixed": "Fixed", "uniform": "Uniform α (control)",
              "random": "Random-LoRA bank (control)", "bc": "BC", "joint": "Joint"}
"""Method -> row label, in the paper's order."""


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _fmt(values: list[float]) -> str:
    if not values:
        return "—"
    mean, std = _mean_std(values)
    return f"{mean:.3g} ± {std:.2g} (n={len(values)})"


@dataclass
class Measured:
    """What the results table says about one trial point."""

    point: TrialPoint
    value: float | None
    """Mean over evaluation seeds of the metric for the trial's main item."""
    skill_value: float | None
    """The same for the trial's new skill alone (composing methods)."""


@dataclass
class SearchResults:
    """Every measured trial of a search, plus its controls."""

    search: SearchSpec
    stream: StreamSpec
    measured: list[Measured]
    controls: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    """(stored item, target task) -> per-eval-seed metric of the item alone on it."""

    def values(self) -> dict[tuple, list[float]]:
        """Per-seed values of the measured points, grouped by `_config` (all but the seed)."""
        groups: dict[tuple, list[float]] = defaultdict(list)
        for m in self.measured:
            if m.value is not None:
                groups[_config(m.point)].append(m.value)
        return groups


def _mean(rows: list[dict], metric: str) -> float | None:
    values = [row[metric] for row in rows if row.get(metric) is not None]
    return sum(values) / len(values) if values else None


def collect(search: SearchSpec, rows: Iterable[dict]) -> SearchResults:
    """Match the results rows to the search's trial points (final rungs only)."""
    stream = search.load_stream()
    by_stream: dict[str, list[dict]] = defaultdict(list)
    by_trial: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row.get("search") == search.name and row.get("trial"):
            by_trial[row["trial"]].append(row)
        else:  # rows recorded before result tags existed
            by_stream[row["stream"]].append(row)
    measured = []
    for point in enumerate_points(search):
        tag = point.tag()
        trial_rows = by_trial.get(tag, []) + by_stream.get(stream_name(search, point), [])
        task, composer = find_composer(stream, search.target(point.target).composer, "targets")
        task_name = skill_item(task.name, point)
        item = task_name if point.method in FROM_SCRATCH else f"{composer.name}_{tag}"
        own = [r for r in trial_rows if r["eval_task"] == task_name]
        value = _mean([r for r in own if r["name"] == item], search.metric)
        skill = None
        if point.method not in FROM_SCRATCH:
            skill = _mean([r for r in own if r["name"] == task_name], search.metric)
        measured.append(Measured(point, value, skill))
    controls: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in by_stream.get(f"{search.name}_controls", []):
        if row.get(search.metric) is not None:
            controls[(row["name"], row["eval_task"])].append(row[search.metric])
    return SearchResults(search, stream, measured, dict(controls))


# ---------------------------------------------------------------------------- tables


def _varying(search: SearchSpec) -> dict[str, bool]:
    return {"rank": len(search.ranks) > 1, "episodes": len(search.data_episodes) > 1,
            "alpha": len(search.alpha) > 1}


def _row_label(method: str, rank, episodes, alpha, varying: dict[str, bool],
               composer: str | None = None) -> str:
    label = ROW_LABELS[method]
    extra = []
    if varying["rank"] and rank is not None:
        extra.append(f"rank {rank}")
    if varying["episodes"] and episodes is not None:
        extra.append(f"{episodes} traj.")
    if varying["alpha"] and alpha is not None and method not in ("fixed", "uniform"):
        extra.append(alpha)
    if composer is not None:
        extra.append(f"composer {composer}")
    return f"{label} [{', '.join(extra)}]" if extra else label


def _config(point: TrialPoint) -> tuple:
    """A point without its seed: (target, method, rank, episodes, α label, how its
    composer trains where the search changes it)."""
    return (point.target, point.method, point.rank, point.episodes,
            None if point.alpha is None else alpha_label(point.alpha), point.composer_label())


def method_table(results: SearchResults) -> list[str]:
    """The paper's layout: a row per method (and configuration), a column per target.
    Every configuration of the search has its row, measured or not ("—")."""
    search = results.search
    labels = [t.label for t in search.targets]
    varying = _varying(search)
    groups = results.values()
    configs = list(dict.fromkeys(_config(m.point) for m in results.measured))
    rows: dict[str, dict[str, list[float]]] = {}
    winners: list[str] = []
    for method in [m for m in ROW_LABELS if m in search.methods]:
        mine = [c for c in configs if c[1] == method]
        if method == "fixed":
            # The fixed weights are tuned by the search: per target and (rank, data size)
            # the start point with the best mean over seeds.
            best: dict[tuple, tuple[float, str | None, list[float]]] = {}
            for config in mine:
                target, _, rank, episodes, alpha, composer = config
                values = groups.get(config, [])
                mean = _mean_std(values)[0] if values else math.nan
                key = (target, rank, episodes, composer)
                if key not in best or math.isnan(best[key][0]) or (
                        not math.isnan(mean) and (mean > best[key][0] if search.mode == "max"
                                                  else mean < best[key][0])):
                    best[key] = (mean, alpha, values)
            for (target, rank, episodes, composer), (mean, alpha, values) in best.items():
                label = _row_label("fixed", rank, episodes, None, varying, composer)
                rows.setdefault(label, {})[target] = values
                if len(search.fixed_alpha) > 1 and not math.isnan(mean):
                    winners.append(f"{target}: {alpha}")
            continue
        for config in mine:
            target, _, rank, episodes, alpha, composer = config
            label = _row_label(method, rank, episodes, alpha, varying, composer)
            rows.setdefault(label, {})[target] = groups.get(config, [])
    lines = ["| method | " + " | ".join(labels) + " |",
             "| --- |" + " ---: |" * len(labels)]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(cells.get(t, [])) for t in labels) + " |")
    if winners:
        lines += ["", "Fixed: best start point of the constant α per target (the constant is "
                  "then trained): " + "; ".join(winners) + "."]
    return lines


def target_task(stream: StreamSpec, target: TargetSpec) -> TaskSpec:
    """The task whose composer a target of the search names."""
    return find_composer(stream, target.composer, "targets")[0]


def base_budgets(search: SearchSpec, stream: StreamSpec, store: SkillStore | None,
                 lead: str = "Bases") -> str | None:
    """One line naming how far each target's base was trained, as stored (a shipped base
    holds the steps it had, not the stream's plan); None when none is stored."""
    parts = []
    for base in dict.fromkeys(target_task(stream, t).base
                              for t in search.targets):
        if base is None or store is None or not store.exists(base):
            continue
        entry = store.entry(base)
        train = (entry.task_spec or {}).get("train", {})
        planned = stream.task(base).train.steps
        shipped = entry.metrics.get("shipped_from")
        parts.append(f"{base} {int(train.get('steps', 0)):,} of {planned:,} steps at batch "
                     f"{train.get('batch_size')}" + (f" (shipped: {shipped})" if shipped else ""))
    if not parts:
        return None
    return f"{lead}, as trained for these trials: " + "; ".join(parts) + "."


def paper_table(search: SearchSpec, labels: list[str] | None = None) -> list[str]:
    """The search file's `paper:` figures, a column per label (default: per target)."""
    labels = [t.label for t in search.targets] if labels is None else labels
    if not search.paper:
        return ["The paper's figures are not in this search file (`paper:` is empty), so "
                "none are shown beside ours."]
    lines = ["Paper (as given in the search file's `paper:`):", "",
             "| method | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for row, cells in search.paper.items():
        lines.append(f"| {row} | " + " | ".join(cells.get(t, "—") for t in labels) + " |")
    return lines


def _new_skill_label(point: TrialPoint, varying: dict[str, bool]) -> str:
    """The control row of a trial's new skill alone: its adapter, and its data size where
    the search varies it (skills fitted on different data are different controls)."""
    kind = "full" if point.method == "mlp" else f"rank {point.rank}"
    if varying["episodes"]:
        kind += f", {point.episodes} traj."
    return f"new skill alone ({kind})"


def controls_table(results: SearchResults) -> list[str]:
    """New skill alone, every stored skill and the base alone, per target."""
    search, stream = results.search, results.stream
    labels = [t.label for t in search.targets]
    rows: dict[str, dict[str, list[float]]] = defaultdict(dict)
    new_skill: dict[tuple[str, str], list[float]] = defaultdict(list)
    # Trials of several methods share one new skill; a trial whose objective needs critics
    # refits it with them (another item, the same skill for the same seed): one value per
    # target, adapter, data size and training seed.
    seen: set[tuple] = set()
    varying = _varying(search)
    for m in results.measured:
        if m.skill_value is not None and m.point.method in ("psec", "mlp"):
            label = _new_skill_label(m.point, varying)
            key = (m.point.target, label, m.point.seed)
            if key in seen:
                continue
            seen.add(key)
            new_skill[(label, m.point.target)].append(m.skill_value)
    for (label, target), values in new_skill.items():
        rows[label][target] = values
    for target in search.targets:
        task, composer = find_composer(stream, target.composer, "targets")
        for skill in composer.skills:
            variants = ([f"lora{r}" for r in search.ranks] if any(
                m in search.methods
                for m in ("psec", "nsec", "asec", "fixed", "uniform", "random"))
                else []) + (["full"] if "mlp" in search.methods else [])
            names = [task.base] if skill == BASE else [variant_name(skill, v) for v in variants]
            for name in names:
                values = results.controls.get((name, task.name))
                if values:
                    label = "base alone" if skill == BASE else f"{name} alone"
                    rows[label][target.label] = values
    if not rows:
        return []
    lines = ["| control | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(labels)]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(cells.get(t, [])) for t in labels) + " |")
    return lines


SeedRows = dict[str, dict[int, tuple[float | None, float | None]]]
"""Row label -> training seed -> (the trial's value, its own new skill alone's)."""


def _seed_rows(results: SearchResults, target: str) -> tuple[SeedRows, dict[str, dict[int, float]]]:
    """One target's configurations by training seed, and its new skills alone by seed."""
    varying = _varying(results.search)
    order = list(ROW_LABELS)
    rows: SeedRows = {}
    skills: dict[str, dict[int, float]] = {}
    for m in sorted((m for m in results.measured if m.point.target == target),
                    key=lambda m: order.index(m.point.method)):
        point = m.point
        alpha = None if point.alpha is None else alpha_label(point.alpha)
        label = _row_label(point.method, point.rank, point.episodes, alpha, varying,
                           point.composer_label())
        if point.method == "fixed":
            label = f"{label} [{alpha}]"
        rows.setdefault(label, {})[point.seed] = (m.value, m.skill_value)
        if m.skill_value is not None:
            skill = _new_skill_label(point, varying)
            if point.objective is not None:
                skill = f"{skill[:-1]}, for composer {point.objective})"
            skills.setdefault(skill, {})[point.seed] = m.skill_value
    return rows, skills


def _gaps(cells: dict[int, tuple[float | None, float | None]], seeds: Sequence[int]
          ) -> list[float]:
    return [v - k for v, k in (cells.get(s, (None, None)) for s in seeds)
            if v is not None and k is not None]


def seed_table(results: SearchResults, gap_digits: int = 0) -> list[str]:
    """Per target, every configuration's value by training seed and, for a method that
    composes a new skill, its difference from that skill alone at the same seed (with
    `gap_digits` decimals: none for returns, one for D4RL scores): a mean ± std over three
    seeds hides whether a method is above its own skill at every seed. Every fixed start
    point has its row here (the method table shows the best)."""
    seeds = list(results.search.seeds)
    lines: list[str] = []
    for target in [t.label for t in results.search.targets]:
        rows, skills = _seed_rows(results, target)
        if not any(v is not None for cells in rows.values() for v, _ in cells.values()):
            continue
        lines += [f"By training seed, {target} (`{results.search.metric}`; the last column: "
                  "the trial minus its own new skill alone, seed by seed):", "",
                  "| method | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | minus its new skill alone |",
                  "| --- |" + " ---: |" * len(seeds) + " --- |"]
        for label, cells in skills.items():
            lines.append(f"| {label} | " + " | ".join(
                _cell(cells.get(s)) for s in seeds) + " | — |")
        for label, cells in rows.items():
            values = [cells.get(s, (None, None))[0] for s in seeds]
            gaps = [f"{g:+.{gap_digits}f}" for g in _gaps(cells, seeds)]
            lines.append(f"| {label} | " + " | ".join(_cell(v) for v in values)
                         + f" | {', '.join(gaps) or '—'} |")
        lines.append("")
    return lines


def gap_summary(results: SearchResults, group: Callable[[str], str],
                gap_digits: int = 0) -> list[str]:
    """Each configuration's trials minus their own new skill alone, pooled over the
    targets `group` puts together (a column of the shift table: its three shifts) and
    their training seeds: how many, the mean, the spread (std as in the tables' cells) and
    the range. Whether a method adds anything to its skill is read here, not from one
    seed's gap."""
    seeds = list(results.search.seeds)
    pooled: dict[tuple[str, str], list[float]] = {}
    for target in [t.label for t in results.search.targets]:
        rows, _ = _seed_rows(results, target)
        for label, cells in rows.items():
            gaps = _gaps(cells, seeds)
            if gaps:
                pooled.setdefault((group(target), label), []).extend(gaps)
    if not pooled:
        return []
    lines = [f"Each method minus its own new skill alone (`{results.search.metric}`), every "
             "trial of a column pooled (its targets × training seeds):", "",
             "| column | method | trials | mean | std | min | max |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (column, label), gaps in pooled.items():
        mean, std = _mean_std(gaps)
        mean = round(mean, gap_digits) + 0.0  # a mean that rounds to zero prints +0, not -0
        lines.append(f"| {column} | {label} | {len(gaps)} | {mean:+.{gap_digits}f} | "
                     f"{std:.{gap_digits}f} | {min(gaps):+.{gap_digits}f} | "
                     f"{max(gaps):+.{gap_digits}f} |")
    return lines + [""]


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


# ----------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(xs: list, values_at) -> tuple[list, list[float], list[float]]:
    """(x, mean, std) over the x of `xs` at which `values_at(x)` (the seeds' values) is
    not empty."""
    kept, means, stds = [], [], []
    for x in xs:
        values = values_at(x)
        if values:
            mean, std = _mean_std(values)
            kept.append(x)
            means.append(mean)
            stds.append(std)
    return kept, means, stds


def _save(plt, fig, ax, path: str, xlabel: str, search: SearchSpec, title: str) -> None:
    """A search plot's labels, legend and PNG (the figure closed)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{search.metric} (mean ± std over seeds)")
    ax.set_title(f"{search.name}: {title}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ranks(results: SearchResults, path: str) -> bool:
    """Score against LoRA rank (PSEC), MLP as a dashed line, one colour per target."""
    search = results.search
    if len(search.ranks) < 2:
        return False
    plt = _pyplot()
    groups = results.values()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for index, target in enumerate(t.label for t in search.targets):
        colour = plt.get_cmap("tab10")(index % 10)
        xs, means, stds = _series(search.ranks, lambda rank, t=target: [
            v for (t_, m, r, *_), vs in groups.items()
            if t_ == t and m == "psec" and r == rank for v in vs])
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, color=colour,
                        label=f"PSEC {target}")
        mlp = [v for (t, m, *_), vs in groups.items() if t == target and m == "mlp"
               for v in vs]
        if mlp:
            ax.axhline(_mean_std(mlp)[0], linestyle="--", color=colour,
                       label=f"PSEC (MLP) {target}")
    if not ax.lines:
        plt.close(fig)
        return False
    ax.set_xscale("log", base=2)
    ax.set_xticks(search.ranks, [str(r) for r in search.ranks])
    _save(plt, fig, ax, path, "LoRA rank n", search, "rank ablation")
    return True


def plot_data(results: SearchResults, path: str) -> bool:
    """Score against trajectories of the target's data, a line per method and target."""
    search = results.search
    sizes = [n for n in search.data_episodes if n is not None]
    if len(sizes) < 2:
        return False
    plt = _pyplot()
    groups = results.values()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    styles = ["-", "--", ":", "-."]
    for t_index, target in enumerate(t.label for t in search.targets):
        for m_index, method in enumerate(m for m in ROW_LABELS if m in search.methods):
            xs, means, stds = _series(sizes, lambda n, t=target, method=method: [
                v for (t_, m, _, e, *_), vs in groups.items()
                if t_ == t and m == method and e == n for v in vs])
            if xs:
                ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3,
                            linestyle=styles[t_index % len(styles)],
                            color=plt.get_cmap("tab10")(m_index % 10),
                            label=f"{ROW_LABELS[method]} {target}")
    if not ax.lines:
        plt.close(fig)
        return False
    ax.set_xticks(sizes, [str(n) for n in sizes])
    _save(plt, fig, ax, path, "trajectories of the new task", search, "sample efficiency")
    return True


# --------------------------------------------------------------------------- section


def _section(results: SearchResults, records: Sequence[dict], command: str,
             plots: list[tuple[str, str]], trace_note: str | None) -> str:
    search = results.search
    done = sum(m.value is not None for m in results.measured)
    lines = [f"<!-- tune:{search.name} -->", f"## Search `{search.name}`", ""]
    lines += [f"Regenerate: `{command}` on a fresh store (`--table-only` rewrites this "
              "section from the store as it is).", ""]
    lines.append(measured_line(records, "the shared base and skills", done))
    lines += ["", f"{done} of {len(results.measured)} trial points have results. Metric: "
              f"`{search.metric}` (mean over evaluation seeds), then mean ± std over "
              f"training seeds {search.seeds}.", ""]
    lines += method_table(results) + [""] + paper_table(search) + [""]
    controls = controls_table(results)
    if controls:
        lines += ["Controls (a composition claim is made against them: docs/ARCHITECTURE.md):", ""]
        lines += controls + [""]
    lines += seed_table(results)
    return "\n".join(lines + section_tail(search.name, plots, trace_note)) + "\n"


def measured_line(records: Sequence[dict], prepared: str, done: int) -> str:
    """Where, at what scale and in how much wall time the search ran (`prepared`: what
    its preparation fitted), each scale it ran at in the store (`records`, oldest first),
    or that it has not run in this store. Without a record, `done` (how many of the
    section's entries have results) tells a store whose Tune folder was not kept with it
    (a committed store, stores/README.md) from one the search never ran in."""
    if not records and done > 0:
        return (f"This store keeps results ({done} measured) but no search record "
                "(its Tune folder was not kept with it), so where and how long it ran is "
                "not known here; the numbers below are the stored results.")
    if not records:
        return "Not run in this store yet: no numbers below are measured."
    return "Measured " + "; ".join(
        f"at scale `{record['scale']}` on {record['machine']}: {record['completed']} of "
        f"{record['trials']} trials completed, wall time {record['wall_seconds']:.0f} s (of "
        f"which {record['prepare_seconds']:.0f} s preparing {prepared}), finished "
        f"{record['finished']}" for record in records) + "."


def section_tail(name: str, plots: Sequence[tuple[str, str]],
                 trace_note: str | None) -> list[str]:
    """The plots, the α(s) trace note and the end marker of search `name`'s section."""
    lines: list[str] = []
    for title, file in plots:
        lines += [f"![{title}]({file})", ""]
    if trace_note:
        lines += [trace_note, ""]
    return lines + [f"<!-- /tune:{name} -->"]


def replace_section(text: str, name: str, section: str) -> str:
    """`text` with the section of search `name` replaced (appended when absent)."""
    begin, end = f"<!-- tune:{name} -->", f"<!-- /tune:{name} -->"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        return head + section.rstrip("\n") + tail
    return text.rstrip("\n") + "\n\n" + section


def trace_file(search: SearchSpec, trace: AlphaTraceSpec) -> str:
    """The file name of an α(s) trace: `<search>-alpha-<composer>` (the target's composer,
    a store-safe name, unlike labels), then what else tells two traces of one target
    apart: `-<method>` unless PSEC, `-seed<k>` unless seed 0, the α choice's tag, the
    composer's objective and data. Every trace is named so, the first too: two scales of
    one search written into one document name their traces apart."""
    composer = search.target(trace.target).composer
    parts = [composer, None if trace.method == "psec" else trace.method,
             None if trace.seed == 0 else f"seed{trace.seed}"]
    tag = "".join(f"-{part}" for part in parts if part is not None)
    trained = "".join(f"-{part}" for part in (trace.objective, trace.composer_data)
                      if part is not None).replace("+", "-")
    return f"{search.name}-alpha{tag}{alpha_file_tag(trace.alpha)}{trained}.png"


def write_section(search_path: str, scale: str, store_uri: str, results_path: str,
                  command: str, address: str | None = None) -> str:
    """Rewrite the search's section of `results_path` and its plots; returns the path."""
    search = load_search(search_path, scale)
    store = SkillStore(store_uri)
    results = collect(search, store.results().to_pylist())
    folder = os.path.dirname(os.path.abspath(results_path))
    os.makedirs(folder, exist_ok=True)
    plots = []
    for title, suffix, plot in (("rank ablation", "ranks", plot_ranks),
                                ("sample efficiency", "data", plot_data)):
        file = f"{search.name}-{suffix}.png"
        if plot(results, os.path.join(folder, file)):
            plots.append((title, file))
    from tune.alpha_trace import plot_trace  # rollouts: imported only when a section is written

    notes = []
    for trace in search.alpha_trace:
        file = trace_file(search, trace)
        try:
            notes.append(plot_trace(search, trace, results.stream, store,
                                    os.path.join(folder, file)))
            chosen = "" if trace.alpha is None else f", α {alpha_label(trace.alpha)}"
            if trace.objective is not None:
                chosen += f", composer {trace.objective}"
            if trace.composer_data is not None:
                chosen += f", composer data {trace.composer_data}"
            plots.append((f"α(s) over one episode ({trace.target}{chosen})", file))
        except PsecError as error:
            notes.append(f"α(s) over one episode on {trace.target}: not plotted ({error}).")
    trace_note = "\n\n".join(notes) or None
    text = ""
    if os.path.exists(results_path):
        with open(results_path) as f:
            text = f.read()
    else:
        text = "# Results\n"
    records = search_records(store.uri, search.name)
    if search.layout == "dynamics_shift":
        from tune.shift_table import shift_section

        section = shift_section(results, records, command, store, plots, trace_note)
    elif search.layout == "safe":
        from tune.safe_table import safe_section, safe_table

        table = safe_table(search, store.results().to_pylist(), store)
        section = safe_section(table, records, command, plots, trace_note)
    else:
        section = _section(results, records, command, plots, trace_note)
    with open(results_path, "w") as f:
        f.write(replace_section(text, search.name, section))
    return results_path
