"""`psec report`: the store's results table as Markdown tables and PNG plots.

For every stream in the results it writes

* a table of the latest evaluation of every item on every task it was evaluated on
  (mean ± std over seeds of the normalised score, and return, success, cost);
* the continual matrix: after task i (rows), the score of task j's own policy on task j
  (columns). Skills are frozen LoRA modules, so a row equal to the one above it means
  nothing was forgotten;
* `<stream>-scores.png` (bars per task and item) and `<stream>-continual.png` (the matrix);
* for a continual stream, Continual World's average success, forgetting and forward
  transfer (pipeline.continual_report) and `<stream>-success.png`, p_i(t) over its
  non-base tasks.

The Markdown starts with the command that regenerates it (STYLE habit 6).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa

from library.errors import PsecError, StoreError
from pipeline import continual_report

REPORT_FILE = "results.md"


def check_output(path: str, option: str, kind: str = "file") -> None:
    """Refuse an output path that cannot be written — a folder where a `kind="file"` goes,
    a file where a `kind="folder"` goes or in the way of its parents, a parent that is not
    writable — in one PsecError naming `option`. The report writers call it before any
    work, so a long search or rollout never ends in a traceback at its last write."""
    path = os.path.abspath(path)
    if kind == "file" and os.path.isdir(path):
        raise PsecError(f"{option} {path} is a folder, not a file")
    if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
        raise PsecError(f"{option} {path} is a file, not a folder")
    existing = os.path.dirname(path)
    while not os.path.exists(existing):  # the folders still to be made
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise PsecError(f"{option} {path} cannot be written: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PsecError(f"{option} {path} cannot be written: {existing} is not writable")


@dataclass
class Cell:
    """Seeds of one (item, eval task) pair aggregated."""

    name: str
    """Store name of the item."""
    method: str
    """Method name (results table)."""
    skills: list[str]
    """Skills the item composes."""
    eval_task: str
    """Task it was evaluated on."""
    scores: list[float]
    """Normalised score per seed."""
    returns: list[float]
    """Mean return per seed."""
    success: list[float]
    """Success rate per seed."""
    cost: list[float]
    """Mean cost per seed."""
    steps: int
    """Training steps of the item."""
    env: str | None = None
    """Env it was rolled out in (results column `env`; None in rows without it)."""

    @property
    def score(self) -> tuple[float, float]:
        return _mean_std(self.scores)

    @property
    def where(self) -> str:
        """The eval task, with the env when its name does not say it (eval.envs)."""
        if self.env is None or self.env == self.eval_task:
            return self.eval_task
        return f"{self.eval_task} [{self.env}]"


def _mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return mean, math.sqrt(var)


def result_rows(table: pa.Table) -> list[dict]:
    """The results table's rows, refused when it lacks the columns psec writes."""
    needed = {"stream", "task", "position", "name", "method", "eval_task", "seed", "score",
              "return_mean"}
    missing = needed - set(table.column_names)
    if table.num_rows and missing:
        raise StoreError(f"results table lacks columns {sorted(missing)}: not written by psec")
    return table.to_pylist()


def latest_cells(rows: Iterable[dict]) -> list[Cell]:
    """Per (item, eval task, env): the seeds of its latest evaluation (highest stream
    position)."""
    latest: dict[tuple[str, str, str | None], int] = {}
    rows = list(rows)
    for row in rows:
        key = (row["name"], row["eval_task"], row.get("env"))
        latest[key] = max(latest.get(key, -1), int(row["position"]))
    cells: dict[tuple[str, str, str | None], Cell] = {}
    for row in rows:
        key = (row["name"], row["eval_task"], row.get("env"))
        if int(row["position"]) != latest[key]:
            continue
        cell = cells.setdefault(key, Cell(
            name=row["name"], method=row["method"], skills=list(row.get("skills") or []),
            eval_task=row["eval_task"], scores=[], returns=[], success=[], cost=[],
            steps=int(row.get("steps") or 0), env=row.get("env")))
        cell.scores.append(float(row["score"]))
        cell.returns.append(float(row["return_mean"]))
        cell.success.append(float(row.get("success") or 0.0))
        cell.cost.append(float(row.get("cost") or 0.0))
    return sorted(cells.values(), key=lambda c: (c.eval_task, c.env or "", c.name))


def continual_matrix(rows: Iterable[dict]) -> tuple[list[str], list[str], dict]:
    """(row tasks in stream order, column tasks, {(row, col): mean score}) of each task's
    own policy (the item named like the task) over the stream."""
    order: dict[str, int] = {}
    values: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        order[row["task"]] = int(row["position"])
        if row["name"] == row["eval_task"]:
            values[(row["task"], row["eval_task"])].append(float(row["score"]))
    tasks = sorted(order, key=order.get)
    columns = [task for task in tasks if any((r, task) in values for r in tasks)]
    means = {key: sum(v) / len(v) for key, v in values.items()}
    return tasks, columns, means


def has_continual_matrix(tasks: list[str], means: dict) -> bool:
    """Whether, in `continual_matrix`'s output, any task was re-evaluated after a later
    task (a non-continual stream only has the diagonal, which the per-item table shows)."""
    return len(tasks) > 1 and any(row != column for row, column in means)


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.3g}"


def markdown(stream: str, rows: list[dict], command: str, plots: list[str]) -> str:
    lines = [f"## Stream `{stream}`", ""]
    scales = sorted({str(row.get("scale")) for row in rows})
    lines += [f"Scale: {', '.join(scales)}. Regenerate with `{command}`.", ""]
    lines += ["| eval task | item | method | skills | seeds | score | return | success | cost |"
              " steps |",
              "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cell in latest_cells(rows):
        mean, std = cell.score
        lines.append(
            f"| {cell.where} | {cell.name} | {cell.method} | {', '.join(cell.skills)} | "
            f"{len(cell.scores)} | {_fmt(mean)} ± {_fmt(std)} | "
            f"{_fmt(_mean_std(cell.returns)[0])} | {_fmt(_mean_std(cell.success)[0])} | "
            f"{_fmt(_mean_std(cell.cost)[0])} | {cell.steps} |")
    tasks, columns, means = continual_matrix(rows)
    if has_continual_matrix(tasks, means):
        lines += ["", "Continual matrix: score of each task's own policy (columns) after each "
                  "task of the stream (rows).", "",
                  "| after \\ on | " + " | ".join(columns) + " |",
                  "| --- |" + " ---: |" * len(columns)]
        for task in tasks:
            cells = [_fmt(means.get((task, column), math.nan)) for column in columns]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    for plot in plots:
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"


def plot_scores(stream: str, rows: list[dict], path: str) -> None:
    """One horizontal bar per (eval task, item), grouped by task, coloured by method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = latest_cells(rows)  # sorted by (eval task, item)
    methods = sorted({cell.method for cell in cells})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    labels, ys, y = [], [], 0.0
    previous_task = None
    for cell in cells:
        if previous_task is not None and cell.eval_task != previous_task:
            y += 0.6  # a gap between tasks
        previous_task = cell.eval_task
        labels.append(f"{cell.where} / {cell.name}")
        ys.append(y)
        y += 1.0
    means = [cell.score[0] for cell in cells]
    stds = [cell.score[1] for cell in cells]
    fig, ax = plt.subplots(figsize=(6.4, 0.35 * len(cells) + 1.4))
    ax.barh(ys, means, xerr=stds, color=[colours[c.method] for c in cells], capsize=2)
    ax.set_yticks(ys, labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("normalised score (mean ± std over seeds)")
    ax.set_title(f"{stream}: latest evaluation per item")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[m]) for m in methods]
    ax.legend(handles, methods, fontsize="small", loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_continual(stream: str, rows: list[dict], path: str) -> bool:
    tasks, columns, means = continual_matrix(rows)
    if not has_continual_matrix(tasks, means):
        return False
    grid = [[means.get((task, column), math.nan) for column in columns] for task in tasks]
    plot_matrix(f"{stream}: continual matrix", tasks, columns, grid, path)
    return True


def plot_matrix(title: str, rows: list[str], columns: list[str], grid, path: str) -> None:
    """A heat map of `grid[r][c]` (after task rows[r], evaluated on columns[c]); NaN blank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(columns) + 2, 0.6 * len(rows) + 1.5))
    image = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after task")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2g}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax, label="score")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def learning_curves(store) -> dict[str, dict]:
    """Item name -> the learning curve in its metrics, for every item that stored one."""
    return {entry.name: entry.metrics["curve"] for entry in store.list()
            if isinstance(entry.metrics.get("curve"), dict)}


def write_report(results: pa.Table, out: str, command: str,
                 curves: dict[str, dict] | None = None) -> str:
    """Write `results.md` and PNGs into `out`; returns the Markdown path. `curves`: the
    stored items' learning curves by name (`learning_curves`), for forward transfer."""
    rows = result_rows(results)
    if not rows:
        raise StoreError("the store holds no results yet: run a stream first (psec run ...)")
    os.makedirs(out, exist_ok=True)
    by_stream: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_stream[row["stream"]].append(row)
    sections = ["# Results", ""]
    for stream in sorted(by_stream):
        stream_rows = by_stream[stream]
        plots = [f"{stream}-scores.png"]
        plot_scores(stream, stream_rows, os.path.join(out, plots[0]))
        if plot_continual(stream, stream_rows, os.path.join(out, f"{stream}-continual.png")):
            plots.append(f"{stream}-continual.png")
        sections.append(markdown(stream, stream_rows, command, plots))
        run = continual_report.continual_run(stream_rows, rows, curves)
        if run is not None:
            heat_map = f"{stream}-success.png"
            if run.sequential:
                plot_matrix(f"{stream}: one network after each task", run.metrics.tasks,
                            run.envs, run.p.tolist(), os.path.join(out, heat_map))
            else:
                # p_i(t) over the continual tasks alone (bases left out), as the metrics use it.
                kept = [r for r in stream_rows if r["task"] in run.metrics.tasks]
                plot_continual(stream, kept, os.path.join(out, heat_map))
            sections.append(continual_report.markdown(
                stream, run.p, run.metrics, heat_map, run.success, what=run.what,
                paper=continual_report.paper_column(run.envs), curves=curves))
    path = os.path.join(out, REPORT_FILE)
    with open(path, "w") as f:
        f.write("\n".join(sections))
    return path
