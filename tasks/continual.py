"""Continual-learning metrics from a success matrix (Continual World, Wolczyk et al., 2021).

The success matrix `p: [T, T]` holds `p[t, i]`, the success (or normalised score) of
task i's policy evaluated right after training task t of the stream. Entries for tasks
not trained yet (i > t) or not evaluated are NaN.

* average success  P(T) = mean_i p[T-1, i]           (every task, after the last one;
  undefined, NaN, while any task's score after the last task is missing: a stream cut
  short, or an evaluation not run yet, has no average success)
* forgetting       F_i  = p[i, i] - p[T-1, i]          (right after task i vs at the end)
  and F = mean_i F_i over all T tasks, as Continual World averages it (the last task's
  F_i is 0 by definition; NaN while any F_i is missing).
* forward transfer FT_i = (AUC_i - AUC_i^b) / (1 - AUC_i^b): how much better task i is
  learnt in the stream than by a reference trained on task i alone (the "scratch"
  baseline b), from the areas under the success curves during training (`curve_auc`;
  the pipeline measures them for tasks with `eval.curve_points`, pipeline/curves.py).
  Where a task has no curves (its own or its reference's) only final successes are known
  and the same formula is applied to them: FT_i = (p[i, i] - p_i^b) / (1 - p_i^b). That
  is a simplification — it compares end points, not learning speed — and
  `ContinualMetrics.transfer_from` says, per task, which one was used.

Pure numpy; no Ray, no results-table format (pipeline.continual_report reads the table).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from library.errors import ShapeError


@dataclass(frozen=True)
class ContinualMetrics:
    """The Continual World summary of one stream."""

    tasks: list[str]
    """Tasks in stream order (the matrix's rows and columns)."""
    average_success: float
    """P(T): mean success of every task after the last task (NaN when one is missing)."""
    forgetting: float
    """Mean of `task_forgetting` over all tasks (Continual World's F; NaN when one is
    missing)."""
    task_forgetting: list[float]
    """F_i = p_i(i) - p_i(T) per task (NaN where either entry is missing)."""
    forward_transfer: float
    """Mean of the defined `task_forward_transfer` values; NaN without a reference."""
    task_forward_transfer: list[float]
    """FT_i per task; NaN where the reference is missing or already perfect."""
    transfer_from: list[str]
    """Per task, what FT_i compares: "auc" (the areas under the training curves, Continual
    World's), "final" (final successes, the simplified version) or "" (undefined)."""
    referenced: int = 0
    """How many tasks have a scratch reference (final success or curve). Fewer than
    len(tasks) means `forward_transfer` is a mean over part of the stream, not Continual
    World's FT over all of it."""

    @property
    def transfer_is_partial(self) -> bool:
        """Whether some tasks lack the scratch reference their forward transfer needs
        (while others have one)."""
        return 0 < self.referenced < len(self.tasks)


def _square(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] == 0:
        raise ShapeError(f"success matrix must be square [T, T] with T >= 1, got {p.shape}")
    return p


def missing_cells(p: np.ndarray) -> list[tuple[int, int]]:
    """The (t, i) with i <= t where p is NaN: the cells a finished continual stream fills
    (every task so far, after each task) that this one has not, in row order."""
    p = _square(p)
    return [(t, i) for t in range(p.shape[0]) for i in range(t + 1) if math.isnan(p[t, i])]


def average_success(p: np.ndarray) -> float:
    """P(T) = mean_i p[T-1, i]; NaN when any of that row is missing (a mean over the
    tasks that happen to be evaluated would not be P(T))."""
    last = _square(p)[-1]
    return float(last.mean()) if np.isfinite(last).all() else math.nan


def task_forgetting(p: np.ndarray) -> np.ndarray:
    """F_i = p[i, i] - p[T-1, i], shape [T]; the last task's is 0 by definition."""
    p = _square(p)
    return np.diagonal(p) - p[-1]


def forgetting(p: np.ndarray) -> float:
    """Mean F_i over all T tasks (Continual World's average, last task included); NaN
    when any F_i is missing, as `average_success` is."""
    values = task_forgetting(p)
    return float(values.mean()) if np.isfinite(values).all() else math.nan


def curve_auc(curve: Sequence[float], steps: Sequence[float] | None = None) -> float:
    """Normalised area under a success curve: the trapezoid rule over the steps it was
    measured at (`steps`; default equal intervals), divided by the span they cover, so a
    constant curve c has AUC c. A curve whose first points were lost (measured from a
    later step on) covers a shorter span, not a span of zeros."""
    values = np.asarray(curve, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ShapeError(f"a success curve must be a non-empty 1-d sequence, got {values.shape}")
    x = np.arange(len(values), dtype=float) if steps is None else np.asarray(steps, dtype=float)
    if x.shape != values.shape or (len(x) > 1 and not (np.diff(x) > 0).all()):
        raise ShapeError(f"a curve's steps must increase and match its {len(values)} values, "
                         f"got {list(x)}")
    if len(values) == 1:
        return float(values[0])
    return float(np.trapezoid(values, x) / (x[-1] - x[0]))


def task_forward_transfer(own: Sequence[float], reference: Sequence[float]) -> np.ndarray:
    """FT_i = (own_i - ref_i) / (1 - ref_i) per task, shape [T].

    `own` and `reference` are AUCs of the success curves (Continual World) or final
    successes (the simplified version, see the module docstring). Where the reference
    is missing (NaN) or already 1 (nothing left to transfer) FT_i is NaN.
    """
    own_values = np.asarray(own, dtype=float)
    ref_values = np.asarray(reference, dtype=float)
    if own_values.shape != ref_values.shape or own_values.ndim != 1:
        raise ShapeError(f"forward transfer needs matching 1-d values, got {own_values.shape} "
                         f"and reference {ref_values.shape}")
    headroom = 1.0 - ref_values
    out = np.full(own_values.shape, math.nan)
    defined = np.isfinite(own_values) & np.isfinite(ref_values) & (headroom > 0)
    out[defined] = (own_values[defined] - ref_values[defined]) / headroom[defined]
    return out


def continual_metrics(tasks: Sequence[str], p: np.ndarray,
                      reference: Sequence[float] | None = None,
                      curves: tuple[Sequence[float], Sequence[float]] | None = None
                      ) -> ContinualMetrics:
    """Every metric of a stream from its success matrix `p: [T, T]` (rows: after task t,
    columns: task i), optionally the scratch reference's final success per task (NaN
    where a task has none) and `curves`: (own AUC, reference AUC) per task, NaN where
    either curve is missing. Task i's forward transfer is Continual World's, from the two
    AUCs, where both exist; otherwise the simplified one from p[i, i] and the reference's
    final success (`transfer_from` says which, per task)."""
    p = _square(p)
    if len(tasks) != p.shape[0]:
        raise ShapeError(f"{len(tasks)} task names for a {p.shape[0]}x{p.shape[0]} matrix")
    nan = np.full(p.shape[0], math.nan)
    ref = nan if reference is None else np.asarray(reference, float)
    transfer = task_forward_transfer(np.diagonal(p), ref)
    kinds = ["final" if math.isfinite(value) else "" for value in transfer]
    referenced = np.isfinite(ref)
    if curves is not None:
        own_auc, ref_auc = (np.asarray(values, float) for values in curves)
        from_curves = task_forward_transfer(own_auc, ref_auc)
        referenced |= np.isfinite(ref_auc)
        for i, value in enumerate(from_curves):
            if np.isfinite(own_auc[i]) and np.isfinite(ref_auc[i]):
                transfer[i], kinds[i] = value, "auc" if math.isfinite(value) else ""
    return ContinualMetrics(
        tasks=list(tasks), average_success=average_success(p), forgetting=forgetting(p),
        task_forgetting=task_forgetting(p).tolist(),
        forward_transfer=float(np.nanmean(transfer)) if np.isfinite(transfer).any()
        else math.nan,
        task_forward_transfer=transfer.tolist(), transfer_from=kinds,
        referenced=int(referenced.sum()))
