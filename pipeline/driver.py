"""The driver: a stream (or a submitted task) becomes datasets, fits and evaluations on Ray.

(The checks live in pipeline.checks, `psec serve` / `psec submit` in pipeline.serving.)

    check (no Ray, no writes) ──> datasets ──> fit units (DAG) ──> evaluations ──> results

1. *Check before any work.* The stream is validated on load (SpecError), the store must
   be writable, every task's data dims must match its base's (ShapeError naming both),
   and every item the stream would register that is already in the store must come from
   the same task spec. Any failure here leaves the store untouched.
2. *Datasets.* A task whose dataset is not in the store gets a Ray task that generates
   (tasks.generators) or imports (tasks.importers) it and stores it.
3. *Fits.* Each fit unit (pipeline.plan) is a Ray task running one TorchTrainer
   (pipeline.fit); it receives the refs of the units and dataset it waits for as
   arguments, so Ray starts it once they are done: independent units run side by side.
   A unit another driver on the cluster is fitting into the same store (a Tune trial
   beside this one, with the same new skill) is waited for, not fitted again
   (pipeline.fit_claims).
4. *Evaluations.* Each item is rolled out on its task as soon as it is registered
   (pipeline.evaluation), while the task's later units still fit: a composer over a skill
   of another task does not hold back the new skill's own rollouts. In a continual
   stream, once tasks 0..i are fitted,
   every earlier task's own policy is rolled out again on its task (the continual
   matrix). Rows go to the store's results table, scores to the items' metrics and to
   TensorBoard.

Progress lives in the store: a unit whose items are all registered is not started, a
stage already registered is skipped inside its unit, an evaluation already in the results
is not repeated, and a unit that was interrupted resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import pyarrow as pa
import ray
from pydantic import BaseModel, ConfigDict

from library.manifest import ManifestEntry
from library.names import BASE
from library.store import SkillStore
from pipeline.checks import Checked, check_plan
from pipeline.evaluation import EvalJob, launch_evaluation, rollout_digest, summarise_job
from pipeline.fit import launch_fit, psec_cause, size_job
from pipeline.fit_claims import LOST, DriverClaims, claim_key
from pipeline.fit_job import FitOptions, FitReport
from pipeline.plan import Stage, StreamPlan, TaskPlan, plan_stream
from pipeline.progress import ProgressView
from pipeline.replay import Rollouts
from pipeline.results import ResultRow, existing_env_keys, now, row_figures
from pipeline.runtime import connect
from pipeline.shipped_base import install
from pipeline.stages import random_skill_name
from pipeline.store_actor import StoreHandle
from pipeline.tblog import RunLog, run_name
from tasks.spec import TaskSpec, dump, load_stream, parse_task


class DriverOptions(BaseModel):
    """How a driver runs its work (the same for every task of a run)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    fit: FitOptions = FitOptions()
    """How every fit runs (workers, checkpoints, retries)."""
    concurrent_fits: int | None = None
    """Shortcut for fit.concurrent_fits (the CLI's --concurrent-fits)."""
    max_failures: int | None = None
    """Shortcut for fit.max_failures (the CLI's --max-failures)."""
    single_worker: Literal["task", "trainer"] | None = None
    """Shortcut for fit.single_worker (the CLI's --single-worker)."""
    progress: bool | None = None
    """Progress bars: None draws them when stderr is a terminal."""
    result_tags: dict[str, str] = {}
    """Extra columns of every result row the run records, by name: `search` and `trial`
    (what `psec tune` sets, so tables find a trial's rows without parsing stream names)."""
    replay: bool = True
    """Record a continual re-evaluation of a frozen item as a copy of its earlier rollout
    (pipeline.replay); False rolls every re-evaluation out (the CLI's --no-replay)."""

    def fit_options(self) -> FitOptions:
        update = {}
        if self.concurrent_fits is not None:
            update["concurrent_fits"] = self.concurrent_fits
        if self.max_failures is not None:
            update["max_failures"] = self.max_failures
        if self.single_worker is not None:
            update["single_worker"] = self.single_worker
        return self.fit.model_copy(update=update)


@dataclass
class ItemScore:
    """The own-task evaluation of one item right after its fit (in each of the task's
    eval envs), or a control item rolled out alone on a task (`eval.controls`), for the
    summary."""

    name: str
    """Store name of the item."""
    task: str
    """The task it was fitted for and evaluated on."""
    method: str
    """base, skill, psec, nsec, asec, fixed or mlp."""
    score: float
    """Normalised score, mean over seeds."""
    return_mean: float
    """Episode return, mean over seeds."""
    episodes: int
    """Episodes rolled out in total."""
    env: str = ""
    """Env it was rolled out in when not the task's own (one of its eval.envs), else ''."""


@dataclass
class StreamSummary:
    """What a run did; `describe()` is what `psec run` prints."""

    stream: str
    """Stream name (`served` for submissions)."""
    scale: str
    """Applied scale, or `as-written`."""
    store: str
    """Absolute URI of the store."""
    fitted: list[str] = field(default_factory=list)
    """Items registered by this run (a rerun of a finished stream fits nothing)."""
    skipped: list[str] = field(default_factory=list)
    """Items that were in the store already."""
    evaluations: int = 0
    """(item, eval task, seed) evaluations made by this run."""
    replayed: int = 0
    """How many of them were continual re-evaluations copied from an earlier rollout of
    the same frozen item (pipeline.replay)."""
    scores: list[ItemScore] = field(default_factory=list)
    """Own-task scores of the items evaluated by this run."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Training seconds of each stage fitted now."""
    unit_seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds of each fit unit (TorchTrainer start and stop included)."""
    unit_trainer_seconds: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Per unit: TorchTrainer start-up and shut-down seconds (outside the training loop)."""
    unit_windows: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Unix times at which each unit's training loop started and ended (overlaps show
    which fits ran side by side)."""
    dataset_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds to generate or import each dataset made now."""
    eval_seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds from launching to summarising each evaluation."""
    wall_seconds: float = 0.0
    paper: dict[str, str] = field(default_factory=dict)
    """The paper's figure per item (the stream's `paper`), printed beside the scores."""

    def describe(self) -> str:
        fitted = f" ({', '.join(self.fitted)})" if self.fitted else ""
        lines = [f"stream {self.stream} ({self.scale}) into {self.store}: fitted "
                 f"{len(self.fitted)}{fitted}, already stored {len(self.skipped)}, "
                 f"{self.evaluations} evaluation(s)"
                 + (f" ({self.replayed} replayed)" if self.replayed else "")
                 + f", {self.wall_seconds:.0f} s"]
        for score in self.scores:
            where = score.task if not score.env else f"{score.task} [{score.env}]"
            paper = self.paper.get(score.name) if not score.env else None
            lines.append(f"  {score.name:<24} {score.method:<6} on {where:<16} "
                         f"score {score.score:8.3f}  return {score.return_mean:9.1f}  "
                         f"({score.episodes} episodes)" + (f"  paper: {paper}" if paper else ""))
        lines.extend(self._time_lines())
        return "\n".join(lines)

    def _time_lines(self) -> list[str]:
        """Where the wall time went: datasets made, fit units (wall seconds, TorchTrainer
        start and stop included), rollouts (the evaluations, side by side as they ran)."""
        def listed(seconds: dict[str, float]) -> str:
            return ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())

        lines = []
        if self.dataset_seconds:
            lines.append(f"  time: datasets {listed(self.dataset_seconds)}")
        if self.unit_seconds:
            lines.append(f"  time: fit units {listed(self.unit_seconds)}")
        if self.eval_seconds:
            lines.append(f"  time: {len(self.eval_seconds)} rollout job(s), "
                         f"{sum(self.eval_seconds.values()):.0f} s in all, the longest "
                         f"{max(self.eval_seconds.values()):.0f} s")
        return lines


# ------------------------------------------------------------------------- datasets


@ray.remote(num_cpus=1, max_retries=0)
def make_dataset(task_json: dict[str, Any], names: list[str], store: StoreHandle,
                 imported: pa.Table | None) -> tuple[float, list[str]]:
    """Generate or take the imported dataset of a task and store it under each of `names`
    (tasks whose data are the same table: `same_data_groups`); returns seconds and, where
    generated data differ from those stored items were fitted on, notes saying so
    (`regenerated_note`)."""
    from tasks.generators import generate

    started = time.perf_counter()
    names = [name for name in names if not store.has_dataset(name)]
    if not names:
        return 0.0, []
    task = parse_task(task_json)
    table = imported if imported is not None else generate(task)
    for name in names:
        store.put_dataset(name, table)
    if imported is not None:
        return time.perf_counter() - started, []
    entries = store.list()  # one manifest read for every name (storing data changes none)
    notes = [regenerated_note(entries, name, table) for name in names]
    return time.perf_counter() - started, [note for note in notes if note is not None]


def same_data_groups(datasets: list[tuple[str, TaskSpec]], imported: dict[str, pa.Table]
                     ) -> list[tuple[TaskSpec, list[str]]]:
    """Datasets to make, (name, the task that makes it), grouped by the table they hold:
    tasks whose generated data are one table (equal `generation_key`: Car Run's reward and
    safety tasks share their 1000 episodes) generate it once and store it under each name.
    Each group is (the task that makes it, its dataset names), in the given order; a task
    whose data are imported (by task name) is a group of its own."""
    from tasks.generators.generator import generation_key

    groups: dict[str, tuple[TaskSpec, list[str]]] = {}
    for name, task in datasets:
        key = (f"imported:{task.name}" if task.name in imported
               else json.dumps(generation_key(task), sort_keys=True))
        groups.setdefault(key, (task, []))[1].append(name)
    return list(groups.values())


def regenerated_note(entries: list[ManifestEntry], name: str, table: pa.Table) -> str | None:
    """A one-line note when stored items fitted on dataset `name` (their own, or taken
    from the store by name) saw other rows than `table` gives them (their recorded
    fingerprint differs): a store whose generated data were left out, continued on a
    machine whose floating point differs (our Car Run data made on an AMD EPYC box differ
    from an Intel Xeon's with the same seed). None when every such item saw these data
    (or none records what it saw)."""
    from pipeline.plan import dataset_name
    from pipeline.stages import fit_rows
    from tasks.dataset import fingerprint

    seen: dict[tuple[str, int | None], str] = {}  # fingerprints by what decides the rows read
    other = []
    for entry in entries:
        if entry.task_spec is None or entry.dataset_fingerprint is None:
            continue
        task = parse_task(entry.task_spec)
        if dataset_name(task) != name:
            continue
        key = (task.data.source, task.data.max_transitions)
        if key not in seen:
            seen[key] = fingerprint(fit_rows(task, table))
        if entry.dataset_fingerprint != seen[key]:
            other.append(entry.name)
    if not other:
        return None
    shown = ", ".join(sorted(other)[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
    return (f"dataset {name} generated again differs from the data {shown} "
            f"{'was' if len(other) == 1 else 'were'} fitted on (this machine's floating "
            "point, or the generator changed): fits from now on use the new data")


# --------------------------------------------------------------------------- driver


class Driver:
    """Runs one plan to the end (or to its first failure)."""

    def __init__(self, plan: StreamPlan, store_uri: str, options: DriverOptions,
                 checked: Checked):
        self.plan = plan
        self.options = options
        self.fit_options = options.fit_options()
        self.checked = checked
        self.stream_seed = plan.seed
        self.store = StoreHandle(store_uri)
        self.summary = StreamSummary(plan.stream, plan.scale, self.store.uri)

    # ---- bookkeeping

    @cached_property
    def controls_of(self) -> dict[str, list[str]]:
        """Per task of the plan, the items rolled out alone on it (`eval.controls`)."""
        return {task_plan.task.name: task_plan.task.control_items()
                for task_plan in self.plan.tasks}

    def _task_fitted(self, task_plan: TaskPlan) -> bool:
        return all(name in self.registered for name in task_plan.items)

    def _eval_jobs(self, item: str, eval_plan: TaskPlan, row_plan: TaskPlan) -> list[EvalJob]:
        """Per env of the eval task (`eval.envs`, else its env): seeds of (item on eval task,
        after row task) not yet in the results."""
        task = eval_plan.task
        jobs = []
        for env in task.eval_envs:
            seeds = [seed for seed in task.eval.seeds
                     if (self.plan.stream, row_plan.task.name, item, task.name, env, seed)
                     not in self.result_keys]
            if seeds:
                # The task as rolled out in `env`: its env, horizon and eval settings.
                in_env = task if env == task.env else task.model_copy(update={"env": env})
                jobs.append(EvalJob(item=item, task=in_env, row_task=row_plan.task.name,
                                    position=row_plan.position, seeds=seeds))
        return jobs

    def _stage(self, item: str) -> Stage:
        """The plan's stage that makes `item`, or, for a control item the plan only reads
        (a served task's composed skill), a stage that describes the stored item."""
        try:
            return self.plan.stage(item)
        except KeyError:
            entry = self.store.entry(item)
            spec = entry.task_spec or {}
            return Stage(kind=entry.kind, name=item, task=spec.get("name", item),
                         parent=entry.parent, skills=[] if entry.kind == "base" else [item],
                         steps=int(entry.metrics.get("train_steps") or 0), batch_size=0,
                         lr=0.0, seed=0, method=entry.kind)

    def _row(self, job: EvalJob, seed: int, stats: dict[str, float],
             replay_of: str | None = None) -> ResultRow:
        stage = self._stage(job.item)
        entry_metrics = self.entries.get(job.item, {})
        skills = stage.skills
        if stage.composer is not None and stage.composer.bank == "random":
            skills = [s if s in (BASE, stage.task) else random_skill_name(stage.name, s)
                      for s in skills]
        return ResultRow(
            **self.options.result_tags,
            stream=self.plan.stream, task=job.row_task, position=job.position,
            name=job.item, kind="composer" if stage.kind == "composer" else stage.kind,
            method=stage.method, composer=job.item if stage.kind == "composer" else None,
            skills=skills, seed=seed, eval_task=job.task.name, env=job.task.env,
            **row_figures(stats), steps=stage.steps,
            wall_s=float(entry_metrics.get("train_seconds") or 0.0), scale=self.plan.scale,
            time=now(), replay_of=replay_of, rollout=rollout_digest(job.task))

    def _record(self, job: EvalJob, per_seed: dict[int, dict[str, float]],
                replay_of: str | None = None) -> None:
        rows = [self._row(job, seed, stats, replay_of) for seed, stats in sorted(per_seed.items())]
        self.store.append_results([row.model_dump(mode="json") for row in rows])
        self.summary.evaluations += len(rows)
        self.summary.replayed += len(rows) if replay_of is not None else 0
        score = sum(row.score for row in rows) / len(rows)
        returns = sum(row.return_mean for row in rows) / len(rows)
        episodes = sum(row.episodes for row in rows)
        stage = self._stage(job.item)
        in_own_env = job.task.env == self.task_env[job.task.name]
        if job.task.name == stage.task and job.row_task == stage.task and in_own_env:
            # On its own task, right after its fit: the item's headline metrics.
            self.store.update_metrics(job.item, {
                "score": score, "return_mean": returns, "eval_episodes": episodes,
                "success": sum(row.success for row in rows) / len(rows),
                "cost": sum(row.cost for row in rows) / len(rows)})
        if job.row_task == stage.task or job.item in self.controls_of[job.row_task]:
            # Its own task's evaluation, or a control rolled out alone on another task.
            self.summary.scores.append(ItemScore(job.item, job.task.name, stage.method, score,
                                                 returns, episodes,
                                                 "" if in_own_env else job.task.env))
        label = job.task.name if in_own_env else f"{job.task.name}/{job.task.env}"
        with RunLog(self.store.uri, run_name(job.item, stage.method, self.stream_seed)) as log:
            log.scalars({f"{label}/score": score, f"{label}/return": returns},
                        job.position, prefix="eval/")

    # ---- the run

    def run(self) -> StreamSummary:
        started = time.perf_counter()
        plan, store = self.plan, self.store
        entries = store.list()
        self.entries = {e.name: e.metrics for e in entries}
        self.registered = set(self.entries)
        self.task_env = {task_plan.task.name: task_plan.task.env for task_plan in plan.tasks}
        results = store.results()
        self.result_keys = recorded_results(plan, results)
        self.rollouts = Rollouts.from_store(plan.stream, results.to_pylist(), entries) \
            if self.options.replay else None
        view = ProgressView(len(plan.tasks), f"{plan.stream}", enabled=self.options.progress)
        pending: dict[ray.ObjectRef, tuple[str, Any]] = {}
        self.claims = DriverClaims(self.store.uri)
        try:
            self._launch(view, pending)
            self._loop(view, pending)
        except BaseException:
            for ref, (kind, _) in pending.items():
                if kind != "shared":  # another driver's fit: it goes on
                    ray.cancel(ref, force=True, recursive=True)
            raise
        finally:
            view.close()
            with contextlib.suppress(Exception):  # never hides what ended the run
                self.claims.release_all()
        self.summary.wall_seconds = time.perf_counter() - started
        return self.summary

    def _launch(self, view: ProgressView, pending: dict) -> None:
        plan, store = self.plan, self.store
        resources = ray.cluster_resources()
        unit_done = {name: all(item in self.registered for item in unit.produces())
                     for name, unit in plan.units.items()}
        # By dataset name: a task that reuses (`source: store`) a dataset another task of
        # the plan makes waits for the same ref.
        data_refs: dict[str, ray.ObjectRef] = {}
        needed = {plan.units[u].dataset for u in plan.units if not unit_done[u]}
        to_make = [task_plan for task_plan in plan.tasks
                   if task_plan.task.data.source != "store" and task_plan.dataset in needed
                   and not store.has_dataset(task_plan.dataset)]
        groups = same_data_groups([(t.dataset, t.task) for t in to_make], self.checked.imported)
        for task, names in groups:
            ref = make_dataset.remote(dump(task), names, store,
                                      self.checked.imported.get(task.name))
            data_refs |= dict.fromkeys(names, ref)
            pending[ref] = ("data", names)
        for name, unit in plan.units.items():
            if unit_done[name]:
                self.summary.skipped.extend(unit.produces())
        self.resources, self.data_refs = resources, data_refs
        self.queued = [name for name in plan.units if not unit_done[name]]
        self.fitting: set[str] = set()
        # Units another driver is fitting (pipeline/fit_claims.py): name -> (claim, holder);
        # None as holder while its fit is not published yet (offered again each round).
        self.borrowed: dict[str, tuple[str, str | None]] = {}
        self.evaluating: dict[tuple[str, str, str, str], EvalJob] = {}
        self.chunks_left: dict[tuple[str, str, str, str], int] = defaultdict(int)
        self.chunk_stats: dict[tuple[str, str, str, str], list] = defaultdict(list)
        self.eval_started: dict[tuple[str, str, str, str], float] = {}
        self.evaluated_items: set[str] = set()
        self.evaluated_tasks: set[str] = set()  # every item of the task's is evaluating
        self.controls_started: set[str] = set()  # tasks whose controls are evaluating
        self.continual_done: set[int] = set()
        self.waiting: list[EvalJob] = []  # re-evaluations waiting for a rollout in flight

    def _schedule_evaluations(self, view: ProgressView, pending: dict) -> None:
        plan = self.plan
        for task_plan in plan.tasks:
            self._schedule_controls(view, task_plan, pending)
            if task_plan.task.name in self.evaluated_tasks:
                continue
            for item in task_plan.items:
                if item in self.registered and item not in self.evaluated_items:
                    self.evaluated_items.add(item)
                    for job in self._eval_jobs(item, task_plan, task_plan):
                        self._evaluate(view, job, pending)
            if self._task_fitted(task_plan):
                self.evaluated_tasks.add(task_plan.task.name)
        if not plan.continual:
            return
        for index, row_plan in enumerate(plan.tasks):
            if index in self.continual_done:
                continue
            if not all(self._task_fitted(t) for t in plan.tasks[: index + 1]):
                break  # "after task i" needs tasks 0..i
            self.continual_done.add(index)
            for earlier in _own_policies(plan.tasks[:index]):
                for job in self._eval_jobs(earlier.task.name, earlier, row_plan):
                    self._reevaluate(view, job, pending)

    def _schedule_controls(self, view: ProgressView, task_plan: TaskPlan, pending: dict) -> None:
        """The task's `single` controls (`TaskSpec.control_items`), rolled out on it once
        every one of them is registered (each was fitted by an earlier task)."""
        items = self.controls_of[task_plan.task.name]
        if not items or task_plan.task.name in self.controls_started \
                or not all(item in self.registered for item in items):
            return
        self.controls_started.add(task_plan.task.name)
        for item in items:
            for job in self._eval_jobs(item, task_plan, task_plan):
                self._evaluate(view, job, pending)

    def _evaluate(self, view: ProgressView, job: EvalJob, pending: dict) -> None:
        """Roll `job` out, unless another stream of the store rolled the same item out
        with the same settings (pipeline.replay): then its figures are recorded."""
        known = self.rollouts.recall_shared(job) if self.rollouts is not None else None
        if known is None:
            self._start_eval(job, pending)
            return
        replay_of, per_seed = known
        self._record(job, per_seed, replay_of)
        view.event(f"copied {job.item}'s evaluation on {job.task.name} from {replay_of}: "
                   "the same item, env, seeds, episodes and rollout settings")

    def _reevaluate(self, view: ProgressView, job: EvalJob, pending: dict) -> None:
        """A continual re-evaluation: replayed when the frozen item's rollout is known,
        waiting when it is in flight, else rolled out."""
        if self.rollouts is None:
            self._start_eval(job, pending)
        elif (known := self.rollouts.recall(job)) is not None:
            replay_of, per_seed = known
            self._record(job, per_seed, replay_of)
            view.event(f"replayed {job.item} on {job.task.name} after {job.row_task}: "
                       f"{job.item} is frozen, its rollout after {replay_of} stands")
        elif any(key[0] == job.item and key[1] == job.task.name and key[3] == job.task.env
                 for key in self.evaluating):
            self.waiting.append(job)
        else:
            self._start_eval(job, pending)

    def _admit_fits(self, view: ProgressView, pending: dict) -> None:
        """Launch queued fit units, in plan order, while fewer than `concurrent_fits` are
        in flight, each once the units it waits for are fitted (its dataset it may still
        wait for). Launching every unit at once would queue all of them in Ray ahead of
        the evaluations of the first ones done, and Ray starts another queued fit on the
        CPU a fit releases while it waits on the store: a CW10 run's evaluations waited
        ~25 min behind ten fits, three of which ran on two cores.

        A unit another driver fits into the same store is waited for instead
        (pipeline/fit_claims.py); it takes none of this driver's fit slots."""
        for name, (_, holder) in list(self.borrowed.items()):
            if holder is None:  # its holder had not published its fit yet
                del self.borrowed[name]
                self._take(view, name, pending)
        while self.queued and len(self.fitting) < self.fit_options.concurrent_fits:
            ready = [name for name in self.queued
                     if not any(after in self.queued or after in self.fitting
                                or after in self.borrowed
                                for after in self.plan.units[name].after)]
            if not ready:
                return
            self.queued.remove(ready[0])
            self._take(view, ready[0], pending)

    def _take(self, view: ProgressView, name: str, pending: dict) -> None:
        """Fit unit `name`, unless another driver registered its items meanwhile or holds
        its claim: then wait for that driver's fit."""
        unit = self.plan.units[name]
        items = unit.produces()
        if all(self.store.exists(item) for item in items):
            view.event(f"{', '.join(items)} registered by another driver meanwhile: not "
                       "fitted again")
            self._registered_elsewhere(name)
            return
        key = claim_key(items)
        offer = self.claims.offer(key)
        if not offer.granted:
            self.borrowed[name] = (key, None if offer.fit is None else offer.holder)
            if offer.fit is not None:
                pending[offer.fit] = ("shared", name)
                view.event(f"{', '.join(items)}: another driver is fitting "
                           f"{'it' if len(items) == 1 else 'them'}; waiting for its fit")
            return
        upstream = [self.data_refs[unit.dataset]] if unit.dataset in self.data_refs else []
        job = size_job(unit, self.plan.stream, self.stream_seed, self.fit_options,
                       self.resources)
        ref = launch_fit(job, self.store, view.board, *upstream)
        self.claims.publish(key, ref)
        pending[ref] = ("fit", name)
        self.fitting.add(name)

    def _shared_done(self, view: ProgressView, ref: ray.ObjectRef, name: str) -> None:
        """Another driver's fit of unit `name` ended: its items are registered, or its
        driver is gone (the unit is queued again: found registered, or fitted here); a
        failure of the fit itself is raised as this driver's."""
        key, holder = self.borrowed.pop(name)
        try:
            _result(ref)
        except LOST:
            self.claims.release(key, holder)
            self.queued.insert(0, name)
            view.event(f"the driver fitting {name} is gone; taking the unit over")
            return
        view.event(f"{', '.join(self.plan.units[name].produces())} fitted by another driver")
        self._registered_elsewhere(name)

    def _registered_elsewhere(self, name: str) -> None:
        items = self.plan.units[name].produces()
        self.registered.update(items)
        self.entries.update({e.name: e.metrics for e in self.store.list()})
        self.summary.skipped.extend(items)

    def _start_eval(self, job: EvalJob, pending: dict) -> None:
        key = job.key()
        self.evaluating[key] = job
        self.eval_started[key] = time.perf_counter()
        for ref in launch_evaluation(self.store, job, ray.cluster_resources()):
            pending[ref] = ("eval", key)
            self.chunks_left[key] += 1

    def _loop(self, view: ProgressView, pending: dict) -> None:
        self.done_tasks: set[str] = set()
        self._schedule_evaluations(view, pending)
        self._admit_fits(view, pending)
        self._count_done_tasks(view)
        while pending or self.borrowed:
            if not pending:  # only units whose holder has not published its fit yet
                time.sleep(0.5)
                self._admit_fits(view, pending)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            view.refresh()
            for ref in ready:
                kind, key = pending.pop(ref)
                if kind == "shared":
                    self._shared_done(view, ref, key)
                    continue
                if kind == "fit":  # ended, however: a waiting driver reads how
                    self.claims.release(claim_key(self.plan.units[key].produces()))
                value = _result(ref)
                if kind == "data":  # key: the names one table is stored under
                    seconds, notes = value
                    self.summary.dataset_seconds[key[0]] = round(seconds, 3)
                    same = f"; {', '.join(key[1:])}: the same rows" if len(key) > 1 else ""
                    view.event(f"dataset {key[0]} stored ({seconds:.0f} s){same}")
                    for note in notes:
                        view.event(f"warning: {note}")
                elif kind == "fit":
                    self._fit_done(view, value)
                else:
                    self._chunk_done(view, key, value)
            waiting, self.waiting = self.waiting, []
            for job in waiting:
                self._reevaluate(view, job, pending)
            # Evaluations first: Ray queues them ahead of the fits admitted after them.
            self._schedule_evaluations(view, pending)
            self._admit_fits(view, pending)
            self._count_done_tasks(view)

    def _count_done_tasks(self, view: ProgressView) -> None:
        """A task is done when it is fitted and no evaluation after it is outstanding."""
        for index, task_plan in enumerate(self.plan.tasks):
            name = task_plan.task.name
            if name in self.done_tasks or name not in self.evaluated_tasks:
                continue
            if self.plan.continual and index not in self.continual_done:
                continue
            if not any(key[2] == name for key in self.evaluating) \
                    and not any(job.row_task == name for job in self.waiting):
                self.done_tasks.add(name)
                view.task_done()

    def _fit_done(self, view: ProgressView, report: FitReport) -> None:
        self.fitting.discard(report.unit)
        unit = self.plan.units[report.unit]
        for name in unit.produces():
            self.registered.add(name)
        self.entries.update({e.name: e.metrics for e in self.store.list()})
        self.summary.fitted.extend(report.registered)
        self.summary.skipped.extend(report.skipped)
        self.summary.stage_seconds.update(report.stage_seconds)
        self.summary.unit_seconds[report.unit] = round(report.wall_seconds, 3)
        self.summary.unit_windows[report.unit] = (report.worker_started, report.worker_finished)
        self.summary.unit_trainer_seconds[report.unit] = (report.start_seconds,
                                                          report.stop_seconds)
        resumed = "".join(f"; {stage} resumed from its checkpoint at step {step} (an "
                          "earlier attempt was cut short: a lost worker, node or driver)"
                          for stage, step in report.resumed.items())
        view.event(f"fitted {', '.join(report.registered) or '(nothing new)'} in "
                   f"{report.wall_seconds:.0f} s (unit {report.unit}){resumed}")

    def _chunk_done(self, view: ProgressView, key: tuple[str, str, str, str], stats: list) -> None:
        self.chunk_stats[key].extend(stats)
        self.chunks_left[key] -= 1
        if self.chunks_left[key]:
            return
        job = self.evaluating.pop(key)
        per_seed = summarise_job(job, self.chunk_stats.pop(key))
        self._record(job, per_seed)
        if self.rollouts is not None:
            self.rollouts.remember(job, per_seed)
        seconds = time.perf_counter() - self.eval_started.pop(key)
        self.summary.eval_seconds["/".join(key)] = round(seconds, 3)
        scores = [stats["score_mean"] for stats in per_seed.values()]
        where = job.task.name if job.task.env == self.task_env[job.task.name] \
            else f"{job.task.name} [{job.task.env}]"
        view.event(f"evaluated {job.item} on {where} after {job.row_task}: score "
                   f"{sum(scores) / len(scores):.3f} ({seconds:.0f} s)")


def _result(ref: ray.ObjectRef) -> Any:
    """`ray.get(ref)`; a task's failure whose root is a user error (PsecError) is raised as
    that error (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        cause = psec_cause(error)
        if cause is not None:
            raise cause from None
        raise


# ------------------------------------------------------------------- entry points


def _own_policies(task_plans: list[TaskPlan]) -> list[TaskPlan]:
    """The tasks whose own policy (the item named like the task) a continual stream
    re-evaluates: not composer tasks, which have none (their composers are frozen too)."""
    return [task_plan for task_plan in task_plans if task_plan.task.role != "composer"]


def planned_results(plan: StreamPlan) -> set[tuple[str, str, str, str, str, int]]:
    """The result keys (stream, after task, item, eval task, env, seed) a complete run
    records."""
    keys = set()
    for index, row_plan in enumerate(plan.tasks):
        row, task = row_plan.task.name, row_plan.task
        for item in [*row_plan.items, *task.control_items()]:
            keys.update((plan.stream, row, item, row, env, seed)
                        for env in task.eval_envs for seed in task.eval.seeds)
        if plan.continual:
            for earlier in _own_policies(plan.tasks[:index]):
                name = earlier.task.name
                keys.update((plan.stream, row, name, name, env, seed)
                            for env in earlier.task.eval_envs for seed in earlier.task.eval.seeds)
    return keys


def recorded_results(plan: StreamPlan, table: pa.Table) -> set[tuple[str, str, str, str, str, int]]:
    """The result keys of `table` as `planned_results` writes them: rows recorded before
    results had an `env` column were rolled out in their eval task's own env."""
    own_env = {task_plan.task.name: task_plan.task.env for task_plan in plan.tasks}
    return {(stream, row, item, eval_task, env or own_env.get(eval_task), seed)
            for stream, row, item, eval_task, env, seed in existing_env_keys(table)}


def run_plan(plan: StreamPlan, store_uri: str, options: DriverOptions | None = None,
             address: str | None = None) -> StreamSummary:
    """Check, then run a plan (Ray is started or attached after the checks, and not at all
    when the store already holds every item and every evaluation of the plan)."""
    started = time.perf_counter()
    options = options or DriverOptions()
    store = SkillStore(store_uri)
    for task_plan in plan.tasks:
        install(task_plan.task, store)  # a shipped base: taken, never fitted
    checked = check_plan(plan, store)
    items = [name for task_plan in plan.tasks for name in task_plan.items]
    if all(store.exists(name) for name in items) and \
            planned_results(plan) <= recorded_results(plan, store.results()):
        return StreamSummary(plan.stream, plan.scale, store.uri, skipped=items,
                             wall_seconds=time.perf_counter() - started)
    connect(address)
    return Driver(plan, store.uri, options, checked).run()


def run_stream_file(path: str, store_uri: str, scale: str | None = None,
                    address: str | None = None, options: DriverOptions | None = None,
                    seed: int | None = None) -> StreamSummary:
    """`psec run`: load and validate the stream, check, run, resume where it stopped; the
    store is this driver's alone meanwhile (pipeline/store_lease.py). `seed` replaces the
    stream's root seed (`psec run --seed`)."""
    from pipeline.store_lease import driver_lease

    stream = load_stream(path, scale)
    if seed is not None:
        stream = stream.model_copy(update={"seed": seed})
    with driver_lease(store_uri, f"psec run {path}"):
        summary = run_plan(plan_stream(stream), store_uri, options, address)
    summary.paper = dict(stream.paper)
    return summary
