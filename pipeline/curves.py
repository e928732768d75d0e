"""Learning curves: a policy stage evaluated at intervals while it trains.

Continual World's forward transfer compares the area under a task's success curve
*during* its training with a reference trained on that task alone (tasks.continual). A
task with `eval.curve_points: N` gets N + 1 points per base or skill stage: at step 0
(before any update: a LoRA skill starts as its base, a base from its random weights) and
after every steps/N steps, the last at the end of training. At each point the fit
snapshots the weights it would register (the EMA ones where it keeps them) and hands them
to the stage's rollout actor (`CurveRollouts`), which rolls them out (`eval.episodes`
episodes of the first eval seed, side by side) while training goes on. The actor asks
for no CPU, so it never waits behind the fits that hold every CPU (a fit blocking on its
own curve would deadlock a full cluster); it shares the cores with them for the seconds
each point runs.

One actor per stage, its points rolled out one after another: a Ray task per point ran
each in a new worker process (the fits hold every CPU, and Ray stops idle workers beyond
one per CPU within a second), which paid for importing torch and the simulator and for
building the envs again at every point. The actor pays once per stage and keeps its envs
(tasks/env_pool.py). Where a point takes longer to roll out than the stage takes to train
to the next one, the points queue, and the stage's registration waits for the last.

Finished points are kept in the unit's report, so they survive into its checkpoints; a
point still running when a worker dies is lost with it, and so is one whose rollout
fails (the fit goes on): both are listed under `lost` (`CurveTracker.metrics`), and the
area under the curve is taken over the steps that were measured
(tasks.continual.curve_auc). The curve is stored in the item's metrics under "curve".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from torch import Tensor

from tasks.spec import TaskSpec, dump, parse_task


@dataclass
class Snapshot:
    """A stage's weights at one training step, as the item it would register."""

    kind: str
    """The stage's kind: base or skill."""
    name: str
    """The stage's store name (a skill's adapters are named after it)."""
    parent: str | None
    """A skill's base (loaded from the store)."""
    config: dict[str, Any]
    tensors: dict[str, Tensor]


def rollout_snapshot(store, snapshot: Snapshot, task_json: dict[str, Any]) -> float:
    """The mean score of `snapshot` over `eval.episodes` episodes of the task's first eval
    seed (the same episodes as the registered item's evaluation of that seed)."""
    from pipeline.acting import acting_from_item
    from pipeline.evaluation import EPISODE_SEED_STRIDE, roll_with
    from tasks.evaluation import summarise
    from tasks.suites import get_suite

    task = parse_task(task_json)
    seed = task.eval.seeds[0]
    act = acting_from_item(store, snapshot.kind, snapshot.name, snapshot.config,
                           snapshot.tensors, parent=snapshot.parent,
                           n_candidates=task.eval.n_candidates,
                           seed=seed * EPISODE_SEED_STRIDE)
    episodes = roll_with(act, task, seed, 0, task.eval.episodes)
    stats = summarise(episodes, get_suite(task.suite), task.env, task.eval.cost_threshold)
    return stats["score_mean"]


@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
class CurveRollouts:
    """The process that rolls out one stage's curve points, in the order they come."""

    def score(self, store, snapshot: Snapshot, task_json: dict[str, Any]) -> float:
        return rollout_snapshot(store, snapshot, task_json)


def curve_steps(steps: int, points: int) -> list[int]:
    """The training steps a curve of `points` intervals is measured at: 0, then every
    steps/points steps (rounded), the last at `steps`."""
    if points <= 0:
        return []
    return sorted({round(steps * k / points) for k in range(points + 1)})


class CurveTracker:
    """The learning curve of one policy stage: which steps are due, the evaluations in
    flight, and the points measured (kept in `report`, the unit's checkpointed report)."""

    def __init__(self, store, task: TaskSpec, stage_name: str, steps: int, start: int,
                 report: dict[str, Any]):
        self.store = store
        self.task_json = dump(task)
        self.episodes = task.eval.episodes
        self.total_steps = steps
        self.scheduled = curve_steps(steps, task.eval.curve_points)
        self._scheduled = set(self.scheduled)
        # Step -> score; keys are strings as the report travels as JSON through checkpoints.
        self.points: dict[str, float] = report.setdefault("curves", {}).setdefault(
            stage_name, {})
        # Steps before the one this attempt starts from that were not measured: their
        # weights died with an earlier worker.
        self.lost = [step for step in self.scheduled
                     if step < start and str(step) not in self.points]
        self._pending: dict[int, ray.ObjectRef] = {}
        self._rollouts: ray.actor.ActorHandle | None = None  # started at the first point

    def due(self, done: int) -> bool:
        """Whether the weights after `done` steps are a point still to measure (called
        after every training step: a set lookup)."""
        return done in self._scheduled and str(done) not in self.points \
            and done not in self._pending and done not in self.lost

    def launch(self, done: int, snapshot: Snapshot) -> None:
        if self._rollouts is None:
            self._rollouts = CurveRollouts.remote()
        self._pending[done] = self._rollouts.score.remote(self.store, snapshot, self.task_json)

    def collect(self, wait: bool) -> None:
        """Move finished evaluations into `points`; with `wait`, all of them."""
        if not self._pending:
            return
        refs = list(self._pending.values())
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=None if wait else 0)[0])
        for step, ref in list(self._pending.items()):
            if ref not in ready:
                continue
            del self._pending[step]
            try:
                self.points[str(step)] = float(ray.get(ref))
            except ray.exceptions.RayError:  # a failed rollout costs its point, not the fit
                self.lost.append(step)

    def close(self) -> None:
        """Stop the rollout actor (after `collect(wait=True)`: a point still in flight
        would be lost). A tracker dropped without it stops the actor as its handle goes."""
        if self._rollouts is not None:
            ray.kill(self._rollouts)
            self._rollouts = None

    def metrics(self) -> dict[str, Any]:
        """The curve for the item's metrics: the steps measured and their scores, and the
        scheduled steps without one (lost with an earlier worker, or a failed rollout)."""
        measured = sorted(int(step) for step in self.points)
        return {"steps": measured, "scores": [self.points[str(step)] for step in measured],
                "lost": sorted(self.lost), "episodes": self.episodes, "total_steps": self.total_steps}
