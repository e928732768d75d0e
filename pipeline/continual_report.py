"""The continual section of `psec report`: Continual World metrics of a continual stream.

From the results rows of one stream it builds the success matrix p_i(t) — the mean over
seeds of the score of task i's own item (the store item named like the task) evaluated
after task t — over the stream's continual tasks, and computes `tasks.continual`'s
average success, forgetting and forward transfer. For Meta-World the score is the
success rate, so p_i(t) is a success rate; for other suites it is the normalised score.

* Bases are pretraining, not continual tasks: a task whose own item is a base is left out
  of the matrix (its rows and its column).
* A stream is continual when some task's own item was evaluated after a later task.
* Forward transfer needs a scratch reference: for task X, a base item named `X-scratch`
  (a policy fitted on X's data alone, e.g. by configs/cw10_scratch.yaml), evaluated on
  its own task in any stream of the store. Where both X's skill and X-scratch stored a
  learning curve (`eval.curve_points`, pipeline/curves.py) it is Continual World's, from
  the areas under the curves; otherwise the simplified final-success version
  (tasks.continual). The section says which, per task.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from tasks.continual import ContinualMetrics, continual_metrics, curve_auc, missing_cells


def _fmt(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def continual_tasks(rows: list[dict]) -> list[str]:
    """The stream's non-base tasks in stream order, or [] when the stream is not
    continual (no task's own item was evaluated after a later task)."""
    order: dict[str, int] = {}
    kinds: dict[str, str] = {}
    revisited = False
    for row in rows:
        order[row["task"]] = int(row["position"])
        if row["name"] == row["eval_task"]:
            kinds[row["eval_task"]] = str(row.get("kind") or "")
            revisited |= row["task"] != row["eval_task"]
    if not revisited:
        return []
    return [task for task in sorted(order, key=order.get)
            if task in kinds and kinds[task] != "base"]


def success_matrix(rows: list[dict], tasks: list[str]) -> np.ndarray:
    """p: [T, T], p[t, i] = mean score of task i's own item after task t (NaN: not
    evaluated)."""
    index = {task: i for i, task in enumerate(tasks)}
    values: dict[tuple[int, int], list[float]] = defaultdict(list)
    for row in rows:
        if row["name"] == row["eval_task"] and row["task"] in index \
                and row["eval_task"] in index:
            values[(index[row["task"]], index[row["eval_task"]])].append(float(row["score"]))
    p = np.full((len(tasks), len(tasks)), math.nan)
    for (t, i), scores in values.items():
        p[t, i] = sum(scores) / len(scores)
    return p


SCRATCH_SUFFIX = "-scratch"
"""The reference of task X is the base item named X + SCRATCH_SUFFIX."""


def _is_scratch_row(row: dict) -> bool:
    """A scratch reference's own evaluation: base `X-scratch` on its own task."""
    return (row.get("kind") == "base" and row["name"].endswith(SCRATCH_SUFFIX)
            and row["eval_task"] == row["name"])


def scratch_reference(all_rows: list[dict], tasks: list[str]) -> list[float]:
    """Per task X: the mean score over seeds of base `X-scratch` on its own task (NaN if
    the store has none)."""
    scores: dict[str, list[float]] = defaultdict(list)
    for row in all_rows:
        if _is_scratch_row(row):
            scores[row["name"][: -len(SCRATCH_SUFFIX)]].append(float(row["score"]))
    return [sum(scores[task]) / len(scores[task]) if scores[task] else math.nan
            for task in tasks]


def curve_aucs(curves: dict[str, dict], tasks: list[str]) -> tuple[list[float], list[float]]:
    """(own, reference) AUC per task from the items' stored learning curves
    (pipeline/curves.py): task X's own item X and its reference X-scratch; NaN where an
    item has no curve."""
    return _aucs(curves, tasks), _aucs(curves, [task + SCRATCH_SUFFIX for task in tasks])


def stream_metrics(rows: list[dict], all_rows: list[dict], curves: dict[str, dict] | None = None
                   ) -> tuple[np.ndarray, ContinualMetrics] | None:
    """(p, metrics) of one stream's rows, scratch references looked up in `all_rows` and
    learning curves in `curves` (item name -> the "curve" of its metrics); None when the
    stream is not continual or has fewer than two continual tasks."""
    tasks = continual_tasks(rows)
    if len(tasks) < 2:
        return None
    p = success_matrix(rows, tasks)
    return p, continual_metrics(tasks, p, scratch_reference(all_rows, tasks),
                                curve_aucs(curves or {}, tasks))


def sequential_tasks(rows: list[dict]) -> tuple[list[str], list[str]] | None:
    """(tasks in stream order, each task's env) of a stream of one network trained task
    after task — each task a base starting from the one before (`init`: fine-tuning) and
    evaluated in the env of every task so far (`eval.envs`), as configs/cw10_finetune.yaml
    is — or None for any other stream. A task's env is the one its rows add."""
    positions: dict[str, int] = {}
    envs: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["name"] != row["task"] or row["eval_task"] != row["task"]:
            continue
        if row.get("kind") != "base" or not row.get("env"):
            return None
        positions[row["task"]] = int(row["position"])
        envs[row["task"]].add(row["env"])
    tasks = sorted(positions, key=positions.get)
    own: list[str] = []
    for task in tasks:
        new = envs[task] - set(own)
        if len(new) != 1 or not set(own) <= envs[task]:
            return None
        own.extend(new)
    if len(tasks) < 2 or all(len(envs[task]) == 1 for task in tasks):
        return None
    return tasks, own


def sequential_metrics(rows: list[dict], all_rows: list[dict],
                       curves: dict[str, dict] | None = None,
                       found: tuple[list[str], list[str]] | None = None,
                       ) -> tuple[np.ndarray, ContinualMetrics] | None:
    """(p, metrics) of a fine-tuning stream (`sequential_tasks`): p[t, i] = mean score over
    seeds of task t's network in task i's env; task i's scratch reference is the
    `<x>-scratch` base rolled out in task i's env. None for any other stream. `found`:
    `sequential_tasks(rows)`, when the caller has it already."""
    found = found or sequential_tasks(rows)
    if found is None:
        return None
    tasks, envs = found
    column = {env: i for i, env in enumerate(envs)}
    index = {task: t for t, task in enumerate(tasks)}
    values: dict[tuple[int, int], list[float]] = defaultdict(list)
    for row in rows:
        if row["name"] == row["task"] == row["eval_task"] and row["task"] in index:
            values[(index[row["task"]], column[row["env"]])].append(float(row["score"]))
    p = np.full((len(tasks), len(tasks)), math.nan)
    for (t, i), scores in values.items():
        p[t, i] = sum(scores) / len(scores)
    scratch: dict[str, str] = {}  # env -> the scratch base rolled out in it
    for row in all_rows:
        if _is_scratch_row(row) and row.get("env"):
            scratch.setdefault(row["env"], row["name"])
    references = [scratch.get(env, "") for env in envs]
    reference = scratch_reference(all_rows, [name[: -len(SCRATCH_SUFFIX)] for name in references])
    own_auc = _aucs(curves or {}, tasks)
    ref_auc = _aucs(curves or {}, references)
    return p, continual_metrics(tasks, p, reference, (own_auc, ref_auc))


@dataclass
class ContinualRun:
    """A stream's continual metrics and what its tables need beside them."""

    p: np.ndarray
    metrics: ContinualMetrics
    sequential: bool
    """A fine-tuning stream (`sequential_metrics`: one network, task after task)."""
    envs: list[str | None]
    """The env each continual task is rolled out in (for the paper's column)."""
    success: bool
    """Whether p holds success rates (`scores_are_success_rates`)."""

    @property
    def what(self) -> tuple[str, str]:
        """What p_i(t) is (SKILLS or SEQUENTIAL)."""
        return SEQUENTIAL if self.sequential else SKILLS


def continual_run(stream_rows: list[dict], all_rows: list[dict],
                  curves: dict[str, dict] | None = None) -> ContinualRun | None:
    """The continual run of one stream's rows — a stream of skills (`stream_metrics`) or a
    fine-tuning stream (`sequential_metrics`) —, or None for a stream that is neither."""
    skills = stream_metrics(stream_rows, all_rows, curves)
    if skills is not None:
        p, metrics = skills
        kept = [row for row in stream_rows if row["task"] in metrics.tasks]
        own_env = {row["eval_task"]: row.get("env") for row in kept
                   if row["name"] == row["eval_task"]}
        return ContinualRun(p, metrics, False, [own_env.get(task) for task in metrics.tasks],
                            scores_are_success_rates(kept))
    order = sequential_tasks(stream_rows)
    found = None if order is None else sequential_metrics(stream_rows, all_rows, curves, order)
    if found is None:
        return None
    p, metrics = found
    return ContinualRun(p, metrics, True, list(order[1]), scores_are_success_rates(stream_rows))


def _aucs(curves: dict[str, dict], names: list[str]) -> list[float]:
    """The area under each named item's stored learning curve; NaN without one."""
    aucs = []
    for name in names:
        curve = curves.get(name) or {}
        aucs.append(curve_auc(curve["scores"], curve["steps"]) if curve.get("scores")
                    else math.nan)
    return aucs


def scores_are_success_rates(rows: list[dict]) -> bool:
    """Whether the rows' scores are success rates (Meta-World's score is its success rate;
    DMC's is the return, D4RL's a normalised return): every score equals its row's
    success rate (a return that is exactly 0 in every row would pass too)."""
    return all(float(row["score"]) == float(row["success"]) for row in rows)


def metric_lines(metrics: ContinualMetrics, success: bool = True) -> list[str]:
    """The three headline lines, exactly as docs/RESULTS.md quotes them; the first is
    "average success" when p holds success rates, else "average score"."""
    return [f"average {'success' if success else 'score'} {_fmt(metrics.average_success)}",
            f"forgetting {_fmt(metrics.forgetting)}",
            f"forward transfer {_fmt(metrics.forward_transfer)}{transfer_coverage(metrics)}"]


def transfer_coverage(metrics: ContinualMetrics) -> str:
    """What follows a forward-transfer figure that covers only part of the stream: the
    tasks with a scratch reference, e.g. " (2 of 10 tasks with a scratch reference)";
    "" when every task (or none) has one."""
    if not metrics.transfer_is_partial:
        return ""
    return f" ({metrics.referenced} of {len(metrics.tasks)} tasks with a scratch reference)"


PAPER_CW10 = {"hammer-v3": 0.91, "push-wall-v3": 0.86, "faucet-close-v3": 0.92,
              "push-back-v3": 0.85, "stick-pull-v3": 0.74, "handle-press-side-v3": 0.95,
              "push-v3": 0.89, "shelf-place-v3": 0.85, "window-close-v3": 0.88,
              "peg-unplug-side-v3": 0.87}
"""PSEC's success per CW10 task at the end of the sequence (the paper's Table 4, Meta-World
v2; ../shared/PAPER.md), by the env a task is rolled out in."""
PAPER_CW10_AVERAGE = 0.87
"""PSEC's CW10 average success (the paper's Table 3)."""


def paper_parts(paper: list[float | None] | None, tasks: int
                ) -> tuple[list[str], str, str, list[str]]:
    """What the paper's column adds to a per-task table: the sentence before the table, the
    header and rule cells, and one cell per task; all empty when `paper` is None."""
    if paper is None:
        return [], "", "", [""] * tasks
    note = ["", f"The paper's PSEC (Tables 3–4, Meta-World v2): average success "
                f"{PAPER_CW10_AVERAGE:.2f}, forgetting 0; per task in the last column."]
    cells = [f" {'—' if figure is None else f'{figure:.2f}'} |" for figure in paper]
    return note, " paper PSEC |", " ---: |", cells


def paper_column(envs: list[str | None]) -> list[float | None] | None:
    """The paper's figure for each task's env, or None when no task is a CW10 task."""
    figures = [PAPER_CW10.get(env) if env else None for env in envs]
    return figures if any(f is not None for f in figures) else None


TRANSFER_FROM = {"auc": "training curves", "final": "final successes", "": "—"}
"""The `from` column: what a task's forward transfer compares."""


SHOWN_MISSING = 6
"""How many of a partial matrix's missing cells its note names."""


def partial_note(p: np.ndarray, tasks: list[str]) -> list[str]:
    """The lines saying that p lacks cells a finished continual stream fills (which, and
    what that leaves undefined); [] when it lacks none."""
    missing = missing_cells(p)
    if not missing:
        return []
    count = len(tasks) * (len(tasks) + 1) // 2
    named = ", ".join(f"{tasks[i]} after {tasks[t]}" for t, i in missing[:SHOWN_MISSING])
    more = f" and {len(missing) - SHOWN_MISSING} more" if len(missing) > SHOWN_MISSING else ""
    return [f"**Partial:** p_i(t) holds {count - len(missing)} of the {count} cells a finished "
            f"run of these {len(tasks)} tasks fills (missing: {named}{more}), so average success and "
            "forgetting, which need every task's, read —. A stream still running, or one "
            "whose evaluations have not run yet, reads so.", ""]


def _transfer_note(metrics: ContinualMetrics) -> str:
    """What the forward-transfer figures compare, in one sentence."""
    if math.isnan(metrics.forward_transfer):
        return ("Forward transfer needs a scratch reference (a base `<task>-scratch` fitted "
                "on the task's data alone, e.g. configs/cw10_scratch.yaml); the store holds "
                "none for these tasks.")
    kinds = [kind for kind in metrics.transfer_from if kind]
    if all(kind == "auc" for kind in kinds):
        return ("Forward transfer is Continual World's: (AUC_i − AUC_i^scratch) / "
                "(1 − AUC_i^scratch), from the areas under the success curves measured while "
                "each task's skill and its scratch reference trained (`eval.curve_points`).")
    note = ("Forward transfer is the simplified final-success version, (p_i(i) − "
            "p_i^scratch) / (1 − p_i^scratch), not the area under the training curve")
    if "auc" in kinds:
        return (note + f", for the {kinds.count('final')} task(s) without learning curves; "
                f"the {kinds.count('auc')} with curves use Continual World's area under "
                "them (column `from`).")
    return note + " (no learning curves stored: set `eval.curve_points`)."


def curve_lines(curves: dict[str, dict], tasks: list[str]) -> list[str]:
    """A table of the stored learning curves of the tasks' own items and their scratch
    references (a row per item with a curve, a column per step measured; `—` where a
    point was lost or not measured); [] when none has one."""
    names = [name for task in tasks for name in (task, task + SCRATCH_SUFFIX)
             if (curves.get(name) or {}).get("scores")]
    if not names:
        return []
    steps = sorted({int(step) for name in names for step in curves[name]["steps"]})
    lines = ["", "Learning curves: the score of each item's weights while it trained, on the "
                 "first eval seed's episodes (`eval.curve_points`); the last point is the "
                 "registered weights.", "",
             "| item | " + " | ".join(f"{step:,}" for step in steps) + " |",
             "| --- |" + " ---: |" * len(steps)]
    for name in names:
        at = dict(zip((int(step) for step in curves[name]["steps"]), curves[name]["scores"]))
        lines.append(f"| {name} | " + " | ".join(_fmt(at.get(step, math.nan)) for step in steps)
                     + " |")
    return lines


SKILLS = ("task i's own skill after task t", "bases left out")
"""What p_i(t) is in a continual stream of skills (the matrix's cell, and what it omits)."""
SEQUENTIAL = ("the one network, fine-tuned task after task, after task t in task i's env",
              "one base per task, each starting from the one before")
"""... and in a fine-tuning stream (`sequential_metrics`)."""


def markdown(stream: str, p: np.ndarray, metrics: ContinualMetrics,
             heat_map: str | None, success: bool = True,
             what: tuple[str, str] = SKILLS, paper: list[float | None] | None = None,
             curves: dict[str, dict] | None = None) -> str:
    """The section `psec report` appends after a continual stream's tables; `success` says
    whether p holds success rates (`scores_are_success_rates`); `what` what p_i(t) is
    (SKILLS or SEQUENTIAL); `paper` the paper's figure per task (`paper_column`); `curves`
    the items' stored learning curves (`curve_lines`)."""
    lines = [f"### Continual metrics of `{stream}`", "",
             f"Over {len(metrics.tasks)} continual tasks ({', '.join(metrics.tasks)}; "
             f"{what[1]}). p_i(t) is the mean score over seeds of {what[0]} (Meta-World: the "
             "success rate; DMC: the return).", "", "```text",
             *metric_lines(metrics, success), "```", "", *partial_note(p, metrics.tasks)]
    lines.append(_transfer_note(metrics))
    note, header, rule, cells = paper_parts(paper, len(metrics.tasks))
    lines += [*note, "", "| task | p_i(i) | p_i(T) | forgetting | forward transfer | from |"
              + header, "| --- | ---: | ---: | ---: | ---: | --- |" + rule]
    for i, task in enumerate(metrics.tasks):
        lines.append(f"| {task} | {_fmt(p[i, i])} | {_fmt(p[-1, i])} | "
                     f"{_fmt(metrics.task_forgetting[i])} | "
                     f"{_fmt(metrics.task_forward_transfer[i])} | "
                     f"{TRANSFER_FROM[metrics.transfer_from[i]]} |{cells[i]}")
    lines += curve_lines(curves or {}, metrics.tasks)
    if heat_map is not None:
        lines += ["", f"Heat map of p_i(t): ![{heat_map}]({heat_map})"]
    return "\n".join(lines) + "\n"
