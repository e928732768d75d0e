"""The rows of the store's results table: one per (evaluated item, eval task, seed, moment).

The driver appends them (`SkillStore.append_results`), `psec report` reads them back, and
a stream that is run again looks them up to skip evaluations it already made.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

Method = Literal["psec", "nsec", "asec", "fixed", "mlp", "random", "scratch", "skill", "base"]

# Composer mode -> method name used in tables (the paper's names for the baselines).
MODE_METHOD: dict[str, str] = {"parameter": "psec", "noise": "nsec", "action": "asec",
                               "fixed": "fixed"}


class ResultRow(BaseModel):
    """One evaluation of one stored item on one task with one seed."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    stream: str
    """Stream the evaluation belongs to (`served` for tasks that came through the inbox)."""
    task: str
    """The stream task after whose fit this evaluation ran (the continual-matrix row)."""
    position: int
    """Index of `task` in the stream (orders the continual matrix)."""
    name: str
    """Store name of the evaluated item."""
    kind: str
    """base | skill | composer."""
    method: Method
    """psec/nsec/asec/fixed (composer modes), mlp (full-rank adapters), scratch, skill, base."""
    composer: str | None
    """Composer name when the item is a composer, else None."""
    skills: list[str]
    """Skills the item composes (a skill: itself; a base: empty)."""
    seed: int
    """Evaluation seed."""
    eval_task: str
    """Task whose env the item was rolled out in (the continual-matrix column)."""
    env: str | None = None
    """Env the item was rolled out in: the eval task's env, or one of its `eval.envs` (a
    zero-shot composer on unseen tasks). None in rows written before this column, and in
    rows of tune's controls, which roll out in the eval task's env."""
    episodes: int
    """Episodes rolled out."""
    return_mean: float
    """Mean undiscounted episode return."""
    return_std: float
    """Standard deviation of the episode return over the episodes."""
    score: float
    """Mean normalised score of the suite (D4RL-style score, success rate, ...)."""
    success: float
    """Fraction of episodes that reported success (0 for suites without success)."""
    cost: float
    """Mean episode safety cost (0 for suites without costs)."""
    steps: int
    """Training steps of the item (its own stage)."""
    wall_s: float
    """Wall-clock seconds of the item's fit (its own stage)."""
    scale: str
    """Scale the stream ran at (smoke, paper, ... or `as-written`)."""
    time: str
    """When the row was recorded, ISO 8601 UTC."""
    search: str | None = None
    """The `psec tune` search that recorded the row (`DriverOptions.result_tags`), else None."""
    trial: str | None = None
    """The search's trial point (its tag) that recorded the row, else None."""
    replay_of: str | None = None
    """For an evaluation copied from an earlier rollout of the same item (pipeline.replay):
    the row task of that rollout (`<stream>/<row task>` when another stream of the store
    recorded it); None when this row's episodes were rolled out for it."""
    rollout: str | None = None
    """`pipeline.evaluation.rollout_digest` of the eval task: the settings besides item,
    env, seed and episodes that decided the episodes (None in rows recorded before it
    existed, which are never copied into another stream)."""

    def key(self) -> tuple[str, str, str, str, int]:
        """What makes an evaluation in the eval task's own env unique: a rerun skips rows
        with a known key (`env_key` for tasks with eval.envs)."""
        return (self.stream, self.task, self.name, self.eval_task, self.seed)

    def env_key(self) -> tuple[str, str, str, str, str | None, int]:
        """`key()` with the env the item was rolled out in."""
        return (self.stream, self.task, self.name, self.eval_task, self.env, self.seed)


FIGURES = {"episodes": "episodes", "return_mean": "return_mean", "return_std": "return_std",
           "score": "score_mean", "success": "success_rate", "cost": "cost_mean"}
"""A row's figures, by column, and the key of `tasks.evaluation.summarise` (one seed's
summary, as `pipeline.evaluation.summarise_job` gives it) each is taken from."""


def row_figures(summary: dict[str, float]) -> dict[str, float | int]:
    """The figure columns of a row from one seed's summary."""
    figures: dict[str, float | int] = {column: summary[key] for column, key in FIGURES.items()}
    figures["episodes"] = int(summary["episodes"])
    return figures


def summary_of(row: dict) -> dict[str, float]:
    """A stored row's figures as the summary they were taken from names them (what
    `row_figures` turns back into the same columns)."""
    return {key: float(row[column]) for column, key in FIGURES.items()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def existing_keys(table: pa.Table) -> set[tuple[str, str, str, str, int]]:
    """The keys of rows already in a results table (empty table: none)."""
    needed = ("stream", "task", "name", "eval_task", "seed")
    if table.num_rows == 0 or not all(column in table.column_names for column in needed):
        return set()
    columns = [table.column(column).to_pylist() for column in needed]
    return {(s, t, n, e, int(seed)) for s, t, n, e, seed in zip(*columns)}


def existing_env_keys(table: pa.Table) -> set[tuple[str, str, str, str, str | None, int]]:
    """The env keys (`ResultRow.env_key`) of rows already in a results table; env is None
    in rows written before results had an `env` column."""
    needed = ("stream", "task", "name", "eval_task", "seed")
    if table.num_rows == 0 or not all(column in table.column_names for column in needed):
        return set()
    columns = [table.column(column).to_pylist() for column in needed]
    envs = (table.column("env").to_pylist() if "env" in table.column_names
            else [None] * table.num_rows)
    return {(s, t, n, e, env, int(seed)) for s, t, n, e, seed, env in zip(*columns, envs)}
