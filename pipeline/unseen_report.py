"""The unseen-task table (PSEC appendix F.2): success of composers on tasks they hold no
skill for, few-shot against zero-shot, per composition level (PSEC / NSEC / ASEC).

A stream's *composer tasks* define the settings: one without `eval.envs` is a few-shot
task (its composers train on a fraction of that task's data and are rolled out in its
env); one with `eval.envs` is a zero-shot task (its composers train on other tasks' data
and are rolled out in each listed env). The table has one row per unseen env and one
column per (setting, method); a cell is the mean ± std over evaluation seeds of the
normalised score (Meta-World: success rate) from the store's results table, with the
paper's figure for that task, setting and method beside it (Tables 6 and 7). A second
table gives each pretraining task's own skill beside the paper's Table 5.

    python -m pipeline.unseen_report configs/metaworld_unseen.yaml --scale smoke \\
        --store ./psec-store --results docs/RESULTS.md

rewrites the section between `<!-- unseen:<stream> -->` and `<!-- /unseen:<stream> -->`
in the results file (appended at its end when the markers are absent), or prints it.
"""

from __future__ import annotations

import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from library.errors import ArgumentParser, exit_status
from library.store import SkillStore
from pipeline.report import check_output
from tasks.spec import StreamSpec, load_stream
from tasks.spec_sections import ComposerSpec

SETTINGS = ("few-shot", "zero-shot")
METHOD_LABELS = {"psec": "PSEC", "nsec": "NSEC", "asec": "ASEC", "fixed": "fixed",
                 "mlp": "PSEC (MLP)", "random": "random-LoRA bank", "uniform": "uniform α"}
"""Column labels by method, in column order; `random` and `uniform` are controls."""
UNIFORM = "uniform"
"""The method key of an untrained uniform-α composer (mode fixed, 0 steps, init uniform):
a control that no data enters, so one evaluation of it serves both settings' tables."""

# The paper's figures for its unseen-task setting (PSEC appendix F.2, success rate on
# Meta-World v2), exactly as ../shared/PAPER.md transcribes them ("Meta-World",
# "Unseen-task setting"), keyed by the paper's task names (no version suffix). The one
# place they live: configs/metaworld_unseen.yaml's task lists are tested against them.
PAPER_PRETRAINING_COLUMNS = ("Scratch", "ASEC", "NSEC", "PSEC")
"""Table 5's columns, in its order."""
PAPER_PRETRAINING: dict[str, tuple[float, float, float, float]] = {
    # Table 5, the 18 pretraining tasks: Scratch / ASEC / NSEC / PSEC.
    "peg-insert-side": (0.50, 0.87, 0.88, 0.90),
    "peg-unplug-side": (0.35, 0.61, 0.78, 0.86),
    "button-press-topdown": (0.71, 0.88, 0.88, 0.89),
    "push-back": (0.26, 0.61, 0.76, 0.88),
    "window-close": (0.65, 0.84, 0.84, 0.88),
    "door-open": (0.74, 0.85, 0.86, 0.86),
    "handle-press": (0.67, 0.96, 0.97, 0.97),
    "plate-slide-side": (0.27, 0.23, 0.53, 0.74),
    "handle-pull-side": (0.76, 0.94, 0.94, 0.95),
    "window-open": (0.87, 0.75, 0.88, 0.89),
    "door-close": (0.90, 0.89, 0.89, 0.91),
    "reach": (0.89, 0.95, 0.95, 0.95),
    "push": (0.15, 0.58, 0.81, 0.92),
    "stick-push": (0.44, 0.54, 0.17, 0.79),
    "drawer-close": (0.97, 0.97, 0.97, 0.97),
    "plate-slide-back": (0.90, 0.94, 0.94, 0.95),
    "coffee-button": (0.91, 0.94, 0.94, 0.95),
    "hand-insert": (0.30, 0.68, 0.63, 0.89),
}
PAPER_PRETRAINING_MEAN = (0.62, 0.78, 0.81, 0.90)
"""Table 5's mean row (over its 18 tasks), as written."""
PAPER_UNSEEN: dict[str, dict[str, dict[str, float]]] = {
    # Table 6: the 12 unseen tasks, composers on 10% of the task's data.
    "few-shot": {
        "plate-slide": {"asec": 0.14, "nsec": 0.66, "psec": 0.89},
        "handle-press-side": {"asec": 0.73, "nsec": 0.65, "psec": 0.92},
        "button-press-wall": {"asec": 0.09, "nsec": 0.03, "psec": 0.72},
        "button-press-topdown-wall": {"asec": 0.87, "nsec": 0.88, "psec": 0.89},
        "push-wall": {"asec": 0.57, "nsec": 0.68, "psec": 0.88},
        "reach-wall": {"asec": 0.41, "nsec": 0.36, "psec": 0.90},
        "faucet-close": {"asec": 0.41, "nsec": 0.49, "psec": 0.90},
        "button-press": {"asec": 0.02, "nsec": 0.14, "psec": 0.23},
        "plate-slide-back-side": {"asec": 0.17, "nsec": 0.19, "psec": 0.92},
        "handle-pull": {"asec": 0.15, "nsec": 0.21, "psec": 0.93},
        "faucet-open": {"asec": 0.14, "nsec": 0.16, "psec": 0.89},
        "stick-pull": {"asec": 0.00, "nsec": 0.00, "psec": 0.32},
    },
    # Table 7: the same tasks, composers trained on the 18 pretraining tasks' data only.
    "zero-shot": {
        "plate-slide": {"asec": 0.03, "nsec": 0.00, "psec": 0.15},
        "handle-press-side": {"asec": 0.50, "nsec": 0.60, "psec": 0.62},
        "button-press-wall": {"asec": 0.00, "nsec": 0.00, "psec": 0.40},
        "button-press-topdown-wall": {"asec": 0.85, "nsec": 0.87, "psec": 0.89},
        "push-wall": {"asec": 0.53, "nsec": 0.53, "psec": 0.71},
        "reach-wall": {"asec": 0.34, "nsec": 0.05, "psec": 0.90},
        "faucet-close": {"asec": 0.00, "nsec": 0.00, "psec": 0.16},
        "button-press": {"asec": 0.00, "nsec": 0.00, "psec": 0.15},
        "plate-slide-back-side": {"asec": 0.00, "nsec": 0.00, "psec": 0.00},
        "handle-pull": {"asec": 0.00, "nsec": 0.00, "psec": 0.00},
        "faucet-open": {"asec": 0.00, "nsec": 0.00, "psec": 0.77},
        "stick-pull": {"asec": 0.00, "nsec": 0.00, "psec": 0.00},
    },
}


@dataclass(frozen=True)
class Column:
    """One column of the table: a setting and a composition method."""

    setting: str
    """few-shot | zero-shot."""
    method: str
    """Method of the composers in it (results table name: psec, nsec, asec, random, ...;
    `uniform` for the untrained uniform-α composer)."""

    @property
    def label(self) -> str:
        return METHOD_LABELS.get(self.method, self.method)


def paper_task(env: str) -> str:
    """The paper's name of a Meta-World env: `reach-wall-v3` -> `reach-wall` (it ran v2)."""
    return re.sub(r"-v\d+$", "", env)


def paper_figure(env: str, column: Column) -> float | None:
    """The paper's figure for `env` in `column` (Table 6 or 7), or None if it has none."""
    return PAPER_UNSEEN.get(column.setting, {}).get(paper_task(env), {}).get(column.method)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_std(values: list[float]) -> str:
    """`mean ± std (n=N)` of per-seed scores, or — when there are none."""
    if not values:
        return "—"
    mean = _mean(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return f"{mean:.2f} ± {std:.2f} (n={len(values)})"


def _paper_note(figure: float | None) -> str:
    """What follows our cell: `; paper 0.89`, or nothing where the paper has no figure."""
    return "" if figure is None else f"; paper {figure:.2f}"


def versus(ours: list[float], theirs: list[float], level: float = 0.95) -> int:
    """+1 when `ours` is clearly above `theirs`, -1 clearly below, 0 within noise: Welch's
    `level` interval of the difference of their means over evaluation seeds excludes 0
    (with no spread on either side, any difference of the means counts; one seed on
    either side is never enough)."""
    from scipy.stats import t

    n, m = len(ours), len(theirs)
    if n < 2 or m < 2:
        return 0  # one seed has no spread to weigh the other's against
    diff = _mean(ours) - _mean(theirs)
    var = [sum((v - _mean(x)) ** 2 for v in x) / (len(x) - 1) for x in (ours, theirs)]
    se2 = var[0] / n + var[1] / m
    if se2 == 0:
        return int(diff > 0) - int(diff < 0)
    dof = se2 ** 2 / sum((v / k) ** 2 / (k - 1) for v, k in zip(var, (n, m)) if v)
    half = float(t.ppf(0.5 + level / 2, dof)) * math.sqrt(se2)
    return int(diff > half) - int(diff < -half)


def column_method(composer: ComposerSpec, row_method: str) -> str:
    """The table's method of a composer: `uniform` for the untrained uniform-α control,
    else the results table's method."""
    if composer.mode == "fixed" and composer.steps == 0 and composer.alpha.init == "uniform":
        return UNIFORM
    return row_method


@dataclass
class UnseenTable:
    """Scores per (env, column) and what the table was made from."""

    stream: str
    """Stream name."""
    scale: str
    """Scale whose tasks define the settings."""
    envs: list[str]
    """Unseen envs, in stream order (few-shot tasks first, then zero-shot eval envs)."""
    columns: list[Column]
    """(setting, method) columns in the order they appear in the stream."""
    scores: dict[tuple[str, Column], list[float]]
    """Per (env, column): the normalised score of each evaluation seed."""
    episodes: list[int]
    """The distinct numbers of episodes per seed among the rows used."""
    skills: dict[str, list[float]] = field(default_factory=dict)
    """Per skill task (stream order, env name): its own skill's score per evaluation seed
    in its env (the pretraining tasks, beside the paper's Table 5)."""
    scratch: dict[str, list[float]] = field(default_factory=dict)
    """Per pretraining env: the scratch reference `<task>-scratch`'s score per seed."""
    controls: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """Per unseen env, per item rolled out alone there (`eval.controls: [single]`: the
    base and each stored skill): its score per evaluation seed."""

    def cell(self, env: str, column: Column) -> str:
        return mean_std(self.scores.get((env, column), []))

    def best_single(self, env: str) -> tuple[str, list[float]] | None:
        """The control item with the highest mean score in `env` (of tied ones the first in
        stream order), and its scores."""
        scored = [(item, values) for item, values in self.controls.get(env, {}).items()
                  if values]
        return max(scored, key=lambda pair: _mean(pair[1])) if scored else None

    def best_single_cell(self, env: str) -> str:
        """`mean ± std (n=N) item`, with how many others tie with it, or —."""
        best = self.best_single(env)
        if best is None:
            return "—"
        top = _mean(best[1])
        tied = sum(1 for values in self.controls[env].values()
                   if values and _mean(values) == top) - 1
        return f"{mean_std(best[1])} {best[0]}" + (f" (+{tied} tied)" if tied else "")

    def setting_columns(self, setting: str) -> list[Column]:
        """A setting's table: its methods, then the uniform-α control wherever it ran."""
        own = [c for c in self.columns if c.setting == setting and c.method != UNIFORM]
        return own + [c for c in self.columns if c.method == UNIFORM]

    def markdown(self, setting: str) -> str:
        """One setting's table (Table 6 few-shot, Table 7 zero-shot): our cells, each with
        the paper's figure beside it where the paper has one, then the best single item."""
        columns = self.setting_columns(setting)
        singles = bool(self.controls)
        header = ["unseen task", *(c.label for c in columns)]
        if singles:
            header.append("best single item alone")
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for env in self.envs:
            cells = [self.cell(env, c) + _paper_note(paper_figure(env, c) if c.setting
                                                     == setting else None)
                     for c in columns]
            if singles:
                cells.append(self.best_single_cell(env))
            lines.append(f"| {env} | " + " | ".join(cells) + " |")
        means = []
        for column in columns:
            per_env = {env: _mean(v) for (env, c), v in self.scores.items()
                       if c == column and v and env in self.envs}
            if not per_env:
                means.append("—")
                continue
            paper = [paper_figure(env, column) for env in per_env]
            paper_mean = (_mean(paper) if None not in paper and column.setting == setting
                          else None)
            means.append(f"{_mean(list(per_env.values())):.2f} over {len(per_env)}"
                         + _paper_note(paper_mean))
        if singles:
            best = [b for b in (self.best_single(env) for env in self.envs) if b]
            means.append(f"{_mean([_mean(v) for _, v in best]):.2f} over {len(best)}"
                         if best else "—")
        lines.append("| mean over envs | " + " | ".join(means) + " |")
        return "\n".join(lines)

    def psec_versus(self, setting: str) -> str:
        """One line: the setting's PSEC column against each other column and the best
        single item, counted over the envs where both have scores (`versus`)."""
        psec = Column(setting, "psec")
        if psec not in self.columns:
            return ""
        others = [(c.label, {env: self.scores.get((env, c), []) for env in self.envs})
                  for c in self.setting_columns(setting) if c != psec]
        others.append(("the best single item",
                       {env: (self.best_single(env) or ("", []))[1] for env in self.envs}))
        parts = []
        for label, theirs in others:
            pairs = [(self.scores.get((env, psec), []), theirs[env]) for env in self.envs]
            pairs = [(a, b) for a, b in pairs if a and b]
            if not pairs:
                continue
            verdicts = [versus(a, b) for a, b in pairs]
            parts.append(f"{label}: above on {verdicts.count(1)}, level on "
                         f"{verdicts.count(0)}, below on {verdicts.count(-1)} of {len(pairs)}")
        if not parts:
            return ""
        return ("PSEC against the others, per env where both have scores (above or below: "
                "Welch's 95% interval of the difference over evaluation seeds excludes 0; "
                "else level): " + "; ".join(parts) + ".")

    def pretraining_markdown(self) -> str:
        """Each pretraining task's own skill (and its scratch reference, where stored)
        beside the paper's Table 5 (Meta-World v2)."""
        labels = PAPER_PRETRAINING_COLUMNS
        lines = ["| pretraining task | our skill | our Scratch | "
                 + " | ".join(f"paper {label}" for label in labels) + " |",
                 "|" + " --- |" * (len(labels) + 3)]
        for env, values in self.skills.items():
            paper = PAPER_PRETRAINING.get(paper_task(env))
            figures = [f"{x:.2f}" for x in paper] if paper else ["—"] * len(labels)
            lines.append(f"| {env} | {mean_std(values)} | "
                         f"{mean_std(self.scratch.get(env, []))} | " + " | ".join(figures) + " |")
        means = []
        for per_env in (self.skills, self.scratch):
            ours = [_mean(v) for v in per_env.values() if v]
            means.append(f"{_mean(ours):.2f} over {len(ours)}" if ours else "—")
        lines.append(f"| mean | {means[0]} | {means[1]} | "
                     + " | ".join(f"{x:.2f}" for x in PAPER_PRETRAINING_MEAN) + " |")
        return "\n".join(lines)


def collect(stream: StreamSpec, rows: list[dict]) -> UnseenTable:
    """The unseen-task table of `stream` (scale applied) from result rows: its own rows,
    and the scratch references (`<task>-scratch`) of its skill tasks from any stream."""
    # composer name -> (setting, the envs its task rolls it out in, its task, its spec)
    composers: dict[str, tuple[str, list[str], str, ComposerSpec]] = {}
    envs: list[str] = []
    skill_envs = {task.name: task.env for task in stream.tasks if task.role == "skill"}
    scratch_envs = {f"{name}-scratch": env for name, env in skill_envs.items()}
    controls_of = {task.name: set(task.control_items()) for task in stream.tasks}
    for task in stream.tasks:
        if task.role != "composer":
            continue
        setting = "zero-shot" if task.eval.envs else "few-shot"
        for composer in task.composers:
            composers[composer.name] = (setting, task.eval_envs, task.name, composer)
        envs.extend(env for env in task.eval_envs if env not in envs)
    columns: list[Column] = []
    scores: dict[tuple[str, Column], list[float]] = defaultdict(list)
    skills: dict[str, list[float]] = {env: [] for env in skill_envs.values()}
    scratch: dict[str, list[float]] = defaultdict(list)
    controls: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    episodes: set[int] = set()
    for row in rows:
        name = row.get("name")
        if name in scratch_envs and row.get("eval_task") == name:
            scratch[scratch_envs[name]].append(float(row["score"]))
            continue
        if row.get("stream") != stream.name:
            continue
        task_name = row.get("eval_task")
        if name in controls_of.get(task_name, ()) and row.get("task") == task_name:
            # An item alone on a composer task (`eval.controls: [single]`).
            controls[row.get("env") or stream.task(task_name).env][name].append(
                float(row["score"]))
            episodes.add(int(row["episodes"]))
            continue
        if row.get("kind") == "skill" and name in skill_envs:
            # A skill in its own task's env: the pretraining table.
            if task_name == name and row.get("env") in (None, skill_envs[name]):
                skills[skill_envs[name]].append(float(row["score"]))
                episodes.add(int(row["episodes"]))
            continue
        if name not in composers:
            continue
        setting, task_envs, composer_task, spec = composers[name]
        env = row.get("env") or task_envs[0]  # rows without env: the task's own env
        if task_name != composer_task or env not in task_envs:
            continue
        column = Column(setting, column_method(spec, str(row["method"])))
        if column not in columns:
            columns.append(column)
        scores[(env, column)].append(float(row["score"]))
        episodes.add(int(row["episodes"]))
    methods = list(METHOD_LABELS)
    columns.sort(key=lambda c: (SETTINGS.index(c.setting),
                                methods.index(c.method) if c.method in methods else len(methods)))
    # Controls in stream order (the base first), so that of tied items the first is named.
    order = [item for task in stream.tasks for item in task.control_items()]
    ordered = {env: {item: items[item] for item in sorted(items, key=order.index)}
               for env, items in controls.items()}
    return UnseenTable(stream.name, stream.applied_scale or "as-written", envs, columns,
                       dict(scores), sorted(episodes), skills, dict(scratch), ordered)


def section(stream_path: str, scale: str, store_uri: str, command: str) -> str:
    """The Markdown section (markers included) for `stream_path` at `scale`."""
    stream = load_stream(stream_path, scale)
    store = SkillStore(store_uri)
    table = collect(stream, store.results().to_pylist())
    body: list[str] = []
    for setting, paper_table in zip(SETTINGS, ("Table 6", "Table 7")):
        if any(c.setting == setting and c.method != UNIFORM for c in table.columns):
            body += [f"{setting.capitalize()} (the paper's {paper_table}):", "",
                     table.markdown(setting), ""]
            if line := table.psec_versus(setting):
                body += [line, ""]
    if not body:
        body = [f"No composer results of stream `{stream.name}` in the store yet.", ""]
    controls = ([
        "Controls: the random-LoRA bank is PSEC over random LoRAs of the stored skills' "
        "per-layer norms, trained like PSEC in that setting; uniform α is one untrained "
        "composer (α = 1/k on every skill) rolled out in every env by the zero-shot task, "
        "so the same cells stand in both tables; the best single item is the base or one "
        "stored skill rolled out alone on the few-shot task (`eval.controls: [single]`), "
        "the best of them picked on this evaluation itself (an upper bound on choosing one "
        "skill), named after its cell.", ""] if table.controls or any(
            c.method in (UNIFORM, "random") for c in table.columns) else [])
    pretraining = ([
        "Pretraining tasks: each task's own skill in its env and its scratch reference "
        "(`<task>-scratch`, configs/metaworld_unseen_scratch.yaml) where stored, beside the "
        "paper's Table 5 (its mean row is over its 18 tasks):",
        "",
        table.pretraining_markdown(),
    ] if table.skills else [])
    return "\n".join([
        f"<!-- unseen:{stream.name} -->",
        f"Generated by `{command}` (scale {table.scale}): mean ± std over evaluation seeds "
        f"of the normalised score (Meta-World: success rate), n seeds of "
        f"{' or '.join(map(str, table.episodes)) or 'no'} episode(s) each; after `paper`, "
        "the paper's figure (appendix F.2, Meta-World v2: Table 6 few-shot, Table 7 "
        "zero-shot; in the mean row, the mean of its figures over the same envs).",
        "",
        *body,
        *controls,
        *pretraining,
        f"<!-- /unseen:{stream.name} -->",
    ])


def write_section(results_md: str, text: str, stream: str) -> None:
    """Replace the stream's marked section of `results_md` by `text` (append if absent)."""
    path = Path(results_md)
    current = path.read_text() if path.exists() else ""
    start, end = f"<!-- unseen:{stream} -->", f"<!-- /unseen:{stream} -->"
    if start in current and end in current:
        head, rest = current.split(start, 1)
        tail = rest.split(end, 1)[1]
        path.write_text(head + text + tail)
    else:
        path.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m pipeline.unseen_report",
                            description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", help="stream file with composer tasks")
    parser.add_argument("--scale", default="smoke", help="scale whose tasks to tabulate")
    parser.add_argument("--store", default="./psec-store", help="skill store URI")
    parser.add_argument("--results", help="Markdown file whose section to rewrite")

    def run() -> None:
        # Parsed inside exit_status: a bad command line is a user error like any other.
        args = parser.parse_args(argv)
        command = (f"python -m pipeline.unseen_report {args.stream} --scale {args.scale} "
                   f"--store {args.store}"
                   + (f" --results {args.results}" if args.results else ""))
        if args.results:
            check_output(args.results, "--results")
        text = section(args.stream, args.scale, args.store, command)
        if args.results:
            write_section(args.results, text, load_stream(args.stream).name)
        else:
            print(text)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
