"""`psec report` over several stores: a continual stream's metrics across its runs (seeds).

A store holds one seed's run of a stream (`psec run STREAM --seed N --store S_N`;
pipeline.checks refuses a second seed in one store). Given several stores, `psec report`
finds every continual stream (or fine-tuning stream) that has results in them, computes
each run's Continual World metrics as the one-store report does
(pipeline.continual_report), and reports per run and across runs: the mean and a 95%
confidence interval over runs (Student's t with n − 1 degrees of freedom, so 3 runs give
mean ± 4.30 × std / √3), for the three headline metrics and, per task, for the final
success p_i(T), forgetting and forward transfer. A task's metric that is undefined in a
run (no scratch reference: forward transfer is NaN) is left out of that task's interval,
and the count says so.

Runs are compared on the same tasks: a run that has not reached the stream's last task
(fewer continual tasks than the longest run) is listed as unfinished and left out.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from library.errors import StoreError
from pipeline import continual_report
from pipeline.plan import STREAM_SEED
from pipeline.report import REPORT_FILE, learning_curves, plot_matrix, result_rows
from tasks.continual import missing_cells

CONFIDENCE = 0.95
"""Level of the intervals over runs."""


def mean_ci(values: list[float], level: float = CONFIDENCE) -> tuple[float, float, int]:
    """(mean, half-width of the `level` Student-t interval, n) of the finite values; the
    half-width is NaN with fewer than two, the mean NaN with none."""
    from scipy.stats import t

    finite = [v for v in values if not math.isnan(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(np.mean(finite))
    if n == 1:
        return mean, math.nan, 1
    half = float(t.ppf(0.5 + level / 2, n - 1) * np.std(finite, ddof=1) / math.sqrt(n))
    return mean, half, n


@dataclass
class Run(continual_report.ContinualRun):
    """One store's run of a stream and its continual metrics."""

    store: str = ""
    """The store's URI."""
    seed: int | None = None
    """The root seed its items were fitted with (None: recorded by none of them)."""


def stream_runs(stores) -> dict[str, list[Run]]:
    """Stream name -> its runs, one per store that has a continual (or fine-tuning) run of
    it, in the order the stores were given. Two runs of a stream with the same recorded
    seed are refused: the interval would count one run twice."""
    runs: dict[str, list[Run]] = {}
    for store in stores:
        rows = result_rows(store.results())
        curves = learning_curves(store)
        seeds = {entry.name: entry.metrics.get(STREAM_SEED) for entry in store.list()}
        streams = sorted({row["stream"] for row in rows})
        for stream in streams:
            stream_rows = [row for row in rows if row["stream"] == stream]
            run = _run(store.uri, stream_rows, rows, curves, seeds)
            if run is not None:
                runs.setdefault(stream, []).append(run)
    for stream, found in runs.items():
        seen: dict[int, str] = {}
        for run in found:
            if run.seed is not None and run.seed in seen:
                raise StoreError(f"stores {seen[run.seed]} and {run.store} both hold seed "
                                 f"{run.seed} of stream {stream!r}: give each seed's run once")
            if run.seed is not None:
                seen[run.seed] = run.store
    return runs


def _run(uri: str, stream_rows: list[dict], rows: list[dict], curves: dict[str, dict],
         seeds: dict[str, int | None]) -> Run | None:
    found = continual_report.continual_run(stream_rows, rows, curves)
    if found is None:
        return None
    recorded = {seeds.get(task) for task in found.metrics.tasks} - {None}
    seed = recorded.pop() if len(recorded) == 1 else None
    return Run(**vars(found), store=uri, seed=seed)


def _shown(uri: str) -> str:
    """A store as the table names it: a local folder below the working directory relative
    to it (as a committed store is named in the repository), anything else as it is."""
    if "://" in uri:
        return uri
    relative = os.path.relpath(uri)
    return uri if relative.startswith("..") else relative


def _whole_transfer(run: Run) -> float:
    """A run's forward transfer where every task has its scratch reference, else NaN (a
    mean over part of the stream is not Continual World's FT of it)."""
    return math.nan if run.metrics.transfer_is_partial else run.metrics.forward_transfer


def _cell(values: list[float]) -> str:
    mean, half, n = mean_ci(values)
    if n == 0:
        return "—"
    text = f"{mean:.2f}" if math.isnan(half) else f"{mean:.2f} ± {half:.2f}"
    return text if n == len(values) else f"{text} (n={n})"


def markdown(stream: str, runs: list[Run], heat_map: str | None) -> str:
    """The section for one stream: each run's headline metrics, their means ± the
    interval, and the per-task table over the runs that reached the last task."""
    longest = max(len(run.metrics.tasks) for run in runs)
    complete = [run for run in runs if len(run.metrics.tasks) == longest]
    unfinished = [run for run in runs if len(run.metrics.tasks) < longest]
    first = complete[0]
    success = all(run.success for run in complete)
    headline = "average success" if success else "average score"
    what = first.what
    lines = [f"### Continual metrics of `{stream}` over {len(complete)} run(s)", "",
             f"Over {longest} continual tasks ({', '.join(first.metrics.tasks)}; {what[1]}). "
             f"p_i(t) is the mean score over evaluation seeds of {what[0]}, per run; each "
             f"figure is the mean over runs ± the half-width of its "
             f"{CONFIDENCE:.0%} confidence interval (Student's t, n − 1 degrees of freedom).",
             "", f"| run (store) | seed | {headline} | forgetting | forward transfer |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for run in complete:
        m = run.metrics
        lines.append(f"| {_shown(run.store)} | {'—' if run.seed is None else run.seed} | "
                     f"{_cell([m.average_success])} | {_cell([m.forgetting])} | "
                     f"{_cell([m.forward_transfer])}"
                     f"{continual_report.transfer_coverage(m)} |")
    lines.append(
        f"| **mean ± {CONFIDENCE:.0%} CI** | | "
        f"**{_cell([run.metrics.average_success for run in complete])}** | "
        f"**{_cell([run.metrics.forgetting for run in complete])}** | "
        f"**{_cell([_whole_transfer(run) for run in complete])}** |")
    for run in unfinished:
        lines += ["", f"Left out, unfinished: {_shown(run.store)} "
                      f"({len(run.metrics.tasks)} of {longest} tasks)."]
    for run in complete:
        if missing := len(missing_cells(run.p)):
            lines += ["", f"Partial: {_shown(run.store)} lacks {missing} cell(s) of p_i(t), "
                          "so its average success and forgetting read — and the means leave "
                          "it out (n = the runs counted)."]
        if run.metrics.transfer_is_partial:
            lines += ["", f"Partial: {_shown(run.store)} has a scratch reference for "
                          f"{run.metrics.referenced} of {longest} tasks, so its forward "
                          "transfer is a mean over those alone and the mean over runs leaves "
                          "it out (n = the runs counted); its per-task figures count."]
    note, header, rule, cells = continual_report.paper_parts(
        continual_report.paper_column(first.envs), longest)
    lines += [*note, "", "| task | p_i(i) | p_i(T) | forgetting | forward transfer |" + header,
              "| --- | ---: | ---: | ---: | ---: |" + rule]
    for i, task in enumerate(first.metrics.tasks):
        lines.append(
            f"| {task} | {_cell([run.p[i, i] for run in complete])} | "
            f"{_cell([run.p[-1, i] for run in complete])} | "
            f"{_cell([run.metrics.task_forgetting[i] for run in complete])} | "
            f"{_cell([run.metrics.task_forward_transfer[i] for run in complete])} |{cells[i]}")
    if heat_map is not None:
        lines += ["", f"Heat map of p_i(t), the mean over runs: ![{heat_map}]({heat_map})"]
    return "\n".join(lines) + "\n"


def write_runs_report(stores, out: str, command: str) -> str:
    """Write `results.md` (one section per continual stream found) and each stream's heat
    map of the mean p_i(t) into `out`; returns the Markdown path."""
    runs = stream_runs(stores)
    if not runs:
        raise StoreError("none of the stores holds a continual stream's results (a stream "
                         "with `continual: true`, or a fine-tuning stream, run to its second "
                         "task)")
    os.makedirs(out, exist_ok=True)
    sections = ["# Results over runs", "", f"Regenerate with `{command}`. The tables of one "
                "run: `psec report --store STORE`.", ""]
    for stream in sorted(runs):
        found = runs[stream]
        longest = max(len(run.metrics.tasks) for run in found)
        complete = [run for run in found if len(run.metrics.tasks) == longest]
        tasks = complete[0].metrics.tasks
        columns = complete[0].envs if complete[0].sequential else tasks
        with warnings.catch_warnings():  # cells no run evaluated stay NaN, quietly
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_p = np.nanmean(np.stack([run.p for run in complete]), axis=0)
        heat_map = f"{stream}-success-runs.png"
        plot_matrix(f"{stream}: p_i(t), mean over {len(complete)} run(s)", tasks, columns,
                    mean_p.tolist(), os.path.join(out, heat_map))
        sections.append(markdown(stream, found, heat_map))
    path = os.path.join(out, REPORT_FILE)
    with open(path, "w") as f:
        f.write("\n".join(sections))
    return path
