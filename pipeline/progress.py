"""Progress of a running stream: fits report steps to a small actor, the driver draws bars.

Ray Train workers run in other processes (often on other machines) and their stdout is
not the user's terminal. Each fit sends `(fit, stage, step, total)` to a `ProgressBoard`
actor owned by the driver; the driver polls it between waits and draws tqdm bars: one
for the stream (tasks done / total) and one per running fit (steps). When stderr is not
a terminal (CI logs, `ray job submit`), the bars are replaced by one line per event.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import ray
from tqdm import tqdm


@dataclass
class FitProgress:
    """Where one fit stands."""

    stage: str
    """Name of the stage being trained (e.g. "walk", "walk-critic")."""
    step: int
    """Steps done in that stage."""
    total: int
    """Steps the stage will take."""


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress per fit; written by fit workers, read by the driver."""

    def __init__(self) -> None:
        self._fits: dict[str, FitProgress] = {}

    def update(self, fit: str, stage: str, step: int, total: int) -> None:
        self._fits[fit] = FitProgress(stage, step, total)

    def finish(self, fit: str) -> None:
        self._fits.pop(fit, None)

    def snapshot(self) -> dict[str, FitProgress]:
        return dict(self._fits)


class ProgressReporter:
    """Called from inside a fit: forwards progress, at most every `interval` seconds."""

    def __init__(self, board: ray.actor.ActorHandle | None, fit: str, interval: float = 0.5):
        self._board = board
        self._fit = fit
        self._interval = interval
        self._last = 0.0

    def __call__(self, stage: str, step: int, total: int, force: bool = False) -> None:
        if self._board is None:
            return
        now = time.monotonic()
        if force or step >= total or now - self._last >= self._interval:
            self._last = now
            self._board.update.remote(self._fit, stage, step, total)  # fire and forget


class ProgressView:
    """The driver's side: a stream bar, fit bars, and event lines."""

    def __init__(self, total_tasks: int, title: str, enabled: bool | None = None):
        self.board = ProgressBoard.remote()
        interactive = sys.stderr.isatty() if enabled is None else enabled
        self._interactive = interactive
        self._stream = tqdm(total=total_tasks, desc=title, unit="task", position=0,
                            leave=True, disable=not interactive, file=sys.stderr)
        self._bars: dict[str, tqdm] = {}

    def event(self, message: str) -> None:
        """One line above the bars (or on its own line when there are no bars)."""
        if self._interactive:
            tqdm.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def task_done(self) -> None:
        self._stream.update(1)

    def refresh(self) -> None:
        """Poll the board and redraw the fit bars."""
        if not self._interactive:
            return
        try:
            fits = ray.get(self.board.snapshot.remote(), timeout=5)
        except ray.exceptions.GetTimeoutError:
            return
        for fit in list(self._bars):
            if fit not in fits:
                self._bars.pop(fit).close()
        for fit, progress in fits.items():
            bar = self._bars.get(fit)
            if bar is None:
                bar = tqdm(total=progress.total, desc=fit, unit="step", leave=False,
                           position=len(self._bars) + 1, file=sys.stderr)
                self._bars[fit] = bar
            if bar.total != progress.total:
                bar.reset(total=progress.total)
            bar.set_postfix_str(progress.stage, refresh=False)
            bar.n = progress.step
            bar.refresh()

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()
        self._stream.close()
        ray.kill(self.board)
