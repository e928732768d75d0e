"""A dynamics-shift search's results in the layout of the paper's Table 8.

The paper's table has a column per target dataset (halfcheetah-medium, …, walker2d-
medium-expert) and a row per method; PSEC and Joint have a row per shift, since their
base (or their extra data) comes from the shifted source domain. Here:

* a column is a target *dataset*: the robot of the target's env and the data it
  generates (`medium`, `medium-replay`, …), or the stored/imported dataset's name;
* a row of a method that builds on the target's base (PSEC and the other composers,
  Joint) is `<method> (<shift>)`, the kind of shift read from the base task's dynamics
  (its factor may differ per robot: a line under the table names them), and when the
  search tries several α(s) choices a composer has a row per choice, named by it (a line
  under the table says where each starts);
* rows of methods that see the target data only (BC, Scratch) have no shift. Their fit
  does not depend on the base, so a column takes them from the first target (in search
  order) that ran them; the search file names them on one target per dataset
  (`targets[i].methods`) so they are fitted once.

A cell is the mean ± std over training seeds of each trial's D4RL-normalised score (mean
over evaluation episodes and seeds). Controls below: the new LoRA skill alone and the
source base alone (zero-shot transfer) on each target, per shift. Then, per target, each
row's value by training seed beside its own new skill alone at that seed
(`tune.table.seed_table`), which a reading of "PSEC above its skill" points at.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

from library.names import BASE
from library.store import SkillStore
from tasks.spec import StreamSpec, TaskSpec
from tune.spec import COMPOSING, FROM_SCRATCH, SearchSpec, find_composer
from tune.table import (
    ROW_LABELS,
    SearchResults,
    _fmt,
    base_budgets,
    gap_summary,
    measured_line,
    paper_table,
    section_tail,
    seed_table,
    target_task,
)
from tune.trials import TrialPoint, alpha_label, enumerate_points, trial_task

SHIFT_FIELDS = {"friction": "friction", "gravity": "gravity", "thigh_size": "thigh size"}
"""Dynamics fields -> how a row names them."""

SCRATCH_LABEL = "Scratch (IQL + diffusion actor)"
"""Scratch fits the target's own objective on its data alone: with the advantage
objective that is IQL with a diffusion actor, the issue's 'IQL from scratch' row."""


def _shifted(task: TaskSpec) -> list[tuple[str, float]]:
    return [(label, getattr(task.dynamics, field)) for field, label in SHIFT_FIELDS.items()
            if getattr(task.dynamics, field) != 1.0]


def shift_text(task: TaskSpec) -> str:
    """`gravity ×2` (fields joined by ', '), or `no shift`."""
    return ", ".join(f"{label} ×{factor:g}" for label, factor in _shifted(task)) or "no shift"


def shift_kind(task: TaskSpec) -> str:
    """`gravity` (fields joined by ', '), or `no shift`: what a row is named by, as the
    paper's rows are, since one kind of shift may take another factor on each robot
    (friction ×0.25 on HalfCheetah, ×0.5 on Walker2d)."""
    return ", ".join(label for label, _ in _shifted(task)) or "no shift"


def _robot(task: TaskSpec) -> str:
    """`halfcheetah` for HalfCheetah-v5: what a column and the shifts line name a robot."""
    return task.env.split("-")[0].lower()


def shifts_line(search: SearchSpec, stream: StreamSpec) -> str:
    """`Shifts of the source bases: friction ×0.25 (halfcheetah), friction ×0.5
    (walker2d); gravity ×2; …`: each row's factors, per robot where they differ."""
    robots: dict[str, dict[str, list[str]]] = defaultdict(dict)  # kind -> text -> robots
    for target in search.targets:
        task = target_task(stream, target)
        base, robot = stream.task(task.base), _robot(task)
        named = robots[shift_kind(base)].setdefault(shift_text(base), [])
        named += [robot] if robot not in named else []
    parts = [", ".join(text if len(texts) == 1 else f"{text} ({'/'.join(names)})"
                       for text, names in texts.items()) for texts in robots.values()]
    return "Shifts of the source bases: " + "; ".join(parts) + "."


def dataset_column(task: TaskSpec) -> str:
    """`halfcheetah-medium` for generated data; the dataset's or file's name otherwise."""
    data = task.data
    if data.source == "generate":
        return f"{_robot(task)}-{data.policy}"
    if data.source == "store":
        return data.dataset or task.name
    return os.path.splitext(os.path.basename(data.path or task.name))[0]


def _row_order(search: SearchSpec) -> list[str]:
    """Composers first, then Joint, BC, Scratch: the paper's order, PSEC on top."""
    first = [m for m in search.methods if m in COMPOSING]
    return first + [m for m in ("joint", "bc", "scratch") if m in search.methods]


def _row_label(method: str) -> str:
    """A method's row name in this table (Scratch is IQL with a diffusion actor here)."""
    return SCRATCH_LABEL if method == "scratch" else ROW_LABELS[method]


def _alpha_rows(search: SearchSpec, method: str) -> list[str | None]:
    """The α choices that give `method` a row each (their labels), or [None] for one row:
    a composer trained with the search's `alpha` (not Fixed's or the uniform control's
    own) has a row per choice when the search lists several."""
    if method in COMPOSING and method not in ("fixed", "uniform") and len(search.alpha) > 1:
        return [alpha_label(alpha) for alpha in search.alpha]
    return [None]


def _row_key(search: SearchSpec, point: TrialPoint) -> tuple[str, str | None]:
    """(method, α label or None): the row a trial's value is filed under."""
    alpha = None if point.alpha is None else alpha_label(point.alpha)
    return point.method, (alpha if alpha in _alpha_rows(search, point.method) else None)


def alpha_line(search: SearchSpec) -> str | None:
    """`α choices of the composer rows: raw/newest+reg 1 starts at the new skill alone,
    regulariser ×1; raw/zero …`; None with one choice (its rows carry no α)."""
    if len(search.alpha) < 2:
        return None
    starts = {"newest": "the new skill alone", "uniform": "equal weights",
              "zero": "the base alone"}
    parts = [f"`{alpha_label(a)}` starts at {starts[a.init]}, "
             + (f"regulariser ×{a.reg:g}" if a.reg else "no regulariser")
             + ("" if a.scale == 1 else f", α = {a.scale:g} × the network's output")
             for a in search.alpha]
    return "α choices of the composer rows: " + "; ".join(parts) + "."


def _listed(items: list[str]) -> str:
    """The items as prose: a; a and b; a, b and c."""
    return ", ".join(items[:-1]) + (" and " if len(items) > 1 else "") + items[-1]


def sampling_line(search: SearchSpec, stream: StreamSpec) -> str | None:
    """`Actions per state: …`: which rows keep the best of N candidates by their task's
    critic and which sample one (a row whose task trains no critics has nothing to rank
    by: BC, and the source base alone); None when no row ranks candidates."""
    counts = sorted({target_task(stream, t).eval.n_candidates
                     for t in search.targets})
    rows: list[tuple[str, bool]] = []  # (row, ranked by a critic)
    points = enumerate_points(search)
    for method in _row_order(search):
        task = trial_task(search, stream, next(p for p in points if p.method == method))
        rows.append((_row_label(method), task.needs_critic))
        if method in COMPOSING and ("the new skill alone", task.needs_critic) not in rows:
            rows.append(("the new skill alone", task.needs_critic))  # its critics are its task's
    rows.append(("the source base alone", False))
    ranked = [row for row, critic in rows if critic]
    single = [row for row, critic in rows if not critic]
    if counts == [1] or not ranked:
        return None
    return (f"Actions per state: {_listed(ranked)} keep the best of "
            f"{' or '.join(map(str, counts))} samples by the target critic's Q (the official "
            f"evaluation); {_listed(single)}, whose tasks train no critics, sample one "
            "(docs/DEVIATIONS.md, \"d4rl_shift evaluation\").")


def shift_rows(results: SearchResults) -> tuple[list[str], dict[str, dict[str, list[float]]],
                                                  dict[str, dict[str, list[float]]]]:
    """(columns, method rows, control rows): row label -> column -> per-seed values."""
    search, stream = results.search, results.stream
    columns: list[str] = []
    shifts: list[str] = []
    by_target: dict[str, tuple[str, str, TaskSpec]] = {}
    for target in search.targets:
        task = target_task(stream, target)
        base = stream.task(task.base)
        column, shift = dataset_column(task), shift_kind(base)
        by_target[target.label] = (column, shift, task)
        columns += [column] if column not in columns else []
        shifts += [shift] if shift not in shifts else []
    values: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(
        lambda: defaultdict(list))  # ((method, α), shift, column) -> target -> values
    skills: dict[tuple[str, str], list[float]] = defaultdict(list)
    seen_skills: set[tuple[str, str]] = set()
    for m in results.measured:
        column, shift, _ = by_target[m.point.target]
        if m.value is not None:
            values[(_row_key(search, m.point), shift, column)][m.point.target].append(m.value)
        if m.skill_value is not None and m.point.method in COMPOSING and \
                (m.point.target, m.point.skill_tag()) not in seen_skills:
            # Trials of several composing methods share one new skill: count it once.
            seen_skills.add((m.point.target, m.point.skill_tag()))
            skills[(shift, column)].append(m.skill_value)
    rows: dict[str, dict[str, list[float]]] = {}
    for method in _row_order(search):
        label = _row_label(method)
        for shift in ([None] if method in FROM_SCRATCH and method != "joint" else shifts):
            for alpha in _alpha_rows(search, method):
                key = (method, alpha)
                cells: dict[str, list[float]] = {}
                for column in columns:
                    if shift is None:  # shift-free: the first target of the column that ran it
                        found = [per_target for s in shifts
                                 for per_target in values.get((key, s, column), {}).values()]
                        cells[column] = next((v for v in found if v), [])
                    else:
                        per_target = values.get((key, shift, column), {})
                        cells[column] = [v for vs in per_target.values() for v in vs]
                row = label if shift is None else f"{label} ({shift})"
                rows[row if alpha is None else f"{row} α {alpha}"] = cells
    controls: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for (shift, column), skill_values in skills.items():
        controls[f"new LoRA skill alone ({shift})"][column] = skill_values
    for column, shift, task in by_target.values():
        base_values = results.controls.get((task.base, task.name))
        if base_values:
            controls[f"source base alone ({shift})"][column] = base_values
    return columns, rows, dict(controls)


def _table(first: str, columns: list[str], rows: dict[str, dict[str, list[float]]]
           ) -> list[str]:
    lines = [f"| {first} | " + " | ".join(columns) + " |", "| --- |" + " ---: |" * len(columns)]
    for label, cells in rows.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(cells.get(c, [])) for c in columns)
                     + " |")
    return lines


def shift_section(results: SearchResults, records: Sequence[dict], command: str,
                  store: SkillStore | None = None,
                  plots: Sequence[tuple[str, str]] = (),
                  trace_note: str | None = None) -> str:
    """The search's section of RESULTS.md (between its `<!-- tune:<search> -->` markers)."""
    search = results.search
    done = sum(m.value is not None for m in results.measured)
    columns, rows, controls = shift_rows(results)
    lines = [f"<!-- tune:{search.name} -->", f"### Search `{search.name}` (Table 8 layout)", "",
             f"Regenerate: `{command}` on a fresh store (`--table-only` rewrites this section "
             "from the store as it is).", ""]
    lines.append(measured_line(records, "data and bases", done))
    lines += ["", f"{done} of {len(results.measured)} trial points have results. Cells: "
              f"D4RL-normalised `{search.metric}` (mean over evaluation episodes and seeds), "
              f"then mean ± std over training seeds {search.seeds} (n = seeds measured).", ""]
    lines += _table("method", columns, rows) + ["", shifts_line(search, results.stream), ""]
    alphas = alpha_line(search)
    lines += [alphas, ""] if alphas else []
    budgets = base_budgets(search, results.stream, store, "Source bases")
    lines += [budgets, ""] if budgets else []
    lines += paper_table(search, columns) + [""]
    if controls:
        lines += ["Controls (the parts of PSEC alone on the target):", ""]
        lines += _table("control", columns, controls) + [""]
    sampling = sampling_line(search, results.stream)
    lines += [sampling, ""] if sampling else []
    skills = {s for t in search.targets
              for s in find_composer(results.stream, t.composer, "targets")[1].skills}
    if skills - {BASE}:
        lines += ["(Targets also compose stored skills; only the base is shown alone.)", ""]
    lines += seed_table(results, gap_digits=1)
    lines += gap_summary(results, lambda label: dataset_column(
        target_task(results.stream, search.target(label))), gap_digits=1)
    return "\n".join(lines + section_tail(search.name, plots, trace_note)) + "\n"
