"""From a stream (or one submitted task) to the fits the driver schedules.

A task becomes *stages*: critics (when its objective needs them), then its base or its
skill, then one stage per composer. Stages are grouped into *fit units*; each unit is one
Ray Train run, because a TorchTrainer costs ~15 s to start and ~7 s to stop and the
smoke-scale stages themselves take seconds. A unit runs its stages in order and waits
only for the units that produce what it needs, so the units form a DAG:

* a task's main unit holds its critics, its base or skill, and every composer whose
  skills are ready by the time the unit starts (in the store, made earlier in the unit,
  or made by a unit it already waits for);
* a composer that needs a skill from a unit running in parallel (S+W→R needs walk while
  run fits beside walk) gets a unit of its own that waits for both.

Two skills on one base therefore fit side by side, and a composer waits for its skills.
A composer task (role `composer`: no skill of its own) is one unit of its composers that
waits for the units making its base and every skill it composes.
Critics are stored inside their task's base or skill item, so a composer in a unit of
its own reads them from there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from library.errors import SpecError, StoreError
from library.names import BASE
from pipeline.results import MODE_METHOD
from tasks.spec import ComposerSpec, StreamSpec, TaskSpec

StageKind = Literal["critics", "base", "skill", "composer"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class Stage(_Model):
    """One thing a fit unit trains."""

    kind: StageKind
    """critics | base | skill | composer."""
    name: str
    """Store name it registers (critics: `<task>-critics`, a label; they are stored inside
    the task's base or skill item)."""
    task: str
    """Name of the task the stage belongs to."""
    parent: str | None
    """The base a skill or composer is built on; None for a base and for critics."""
    skills: list[str]
    """Composer: every composed skill in order ('base' allowed, the task's own skill last);
    skill: [its own name]; otherwise empty."""
    composer: ComposerSpec | None = None
    """The composer's spec (composer stages only)."""
    steps: int
    """Optimisation steps of the stage."""
    batch_size: int
    """Transitions per step, summed over the unit's workers."""
    lr: float
    """Adam learning rate."""
    seed: int
    """Seed of the stage (per-worker seeds derive from it)."""
    method: str
    """Method name in the results table (base, skill, psec, nsec, asec, fixed, mlp)."""

    @property
    def stored(self) -> bool:
        """Whether the stage registers an item of its own."""
        return self.kind != "critics"


class FitUnit(_Model):
    """Stages fitted in sequence by one Ray Train run."""

    name: str
    """Unique within the plan; with the stream name it names the Ray Train run."""
    task: TaskSpec
    """The task whose data every stage of the unit trains on."""
    position: int
    """Index of that task in the stream."""
    dataset: str
    """Store name of the task's dataset."""
    stages: list[Stage]
    """What to fit, in order."""
    needs: list[str]
    """Store items that must exist before the unit starts (its base, composed skills)."""
    after: list[str]
    """Units this one waits for."""

    def produces(self) -> list[str]:
        """Store names the unit registers."""
        return [stage.name for stage in self.stages if stage.stored]


class TaskPlan(_Model):
    """One task of the plan and how it is evaluated."""

    task: TaskSpec
    """The task spec (scale applied)."""
    position: int
    """Index in the stream."""
    dataset: str
    """Store name of its dataset."""
    units: list[str]
    """Its fit units (main unit first)."""
    items: list[str]
    """Store names it produces (its base or skill, then its composers)."""


class StreamPlan(_Model):
    """Everything a driver schedules for a stream."""

    stream: str
    """Stream name (results and run names carry it)."""
    scale: str
    """Applied scale, or `as-written`."""
    continual: bool
    """Re-evaluate earlier tasks' policies after each task."""
    tasks: list[TaskPlan]
    """In stream order."""
    units: dict[str, FitUnit]
    """By name, in an order where every unit comes after the units it waits for."""
    seed: int = 0
    """The root seed every stage seed derives from (the stream's `seed`, `psec run --seed`,
    a search point's seed); fitted items record it (STREAM_SEED)."""

    def stage(self, name: str) -> Stage:
        for unit in self.units.values():
            for stage in unit.stages:
                if stage.name == name:
                    return stage
        raise KeyError(name)


STREAM_SEED = "stream_seed"
"""The item metric that records the root seed of the run that fitted the item: a store
holds one seed's run of a stream (pipeline.checks refuses another seed's)."""


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from the stream seed and positions (stable across runs and machines)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0] & 0x7FFFFFFF)


def dataset_name(task: TaskSpec) -> str:
    """Store name of a task's dataset: its own name unless it reuses a stored one."""
    return task.data.dataset if task.data.source == "store" else task.name


def composer_method(task: TaskSpec, composer: ComposerSpec) -> str:
    if composer.bank == "random":
        return "random"  # the random-LoRA bank control, whatever its mode
    # PSEC(MLP) is parameter-level composition of full-rank adapters.
    if composer.mode == "parameter" and task.lora.kind == "full":
        return "mlp"
    return MODE_METHOD[composer.mode]


def _task_stages(task: TaskSpec, seed: int, position: int) -> list[Stage]:
    """critics?, base|skill, composers — the task's stages in order."""
    stages: list[Stage] = []
    train = task.train

    def seed_of(index: int) -> int:
        return derive_seed(seed, position, index)

    if task.needs_critic:
        stages.append(Stage(kind="critics", name=f"{task.name}-critics", task=task.name,
                            parent=None, skills=[], steps=task.critic.steps,
                            batch_size=train.batch_size, lr=train.lr, seed=seed_of(0),
                            method="critics"))
    if task.role == "base":
        stages.append(Stage(kind="base", name=task.name, task=task.name, parent=None,
                            skills=[], steps=train.steps, batch_size=train.batch_size,
                            lr=train.lr, seed=seed_of(1), method="base"))
        return stages
    if task.role == "skill":
        stages.append(Stage(kind="skill", name=task.name, task=task.name, parent=task.base,
                            skills=[task.name], steps=train.steps, batch_size=train.batch_size,
                            lr=train.lr, seed=seed_of(1), method="skill"))
    for index, composer in enumerate(task.composers):
        stages.append(Stage(kind="composer", name=composer.name, task=task.name,
                            parent=task.base, skills=task.composer_skills(composer),
                            composer=composer, steps=composer.steps,
                            batch_size=train.batch_size, lr=train.lr,
                            seed=seed_of(2 + index), method=composer_method(task, composer)))
    return stages


def _ancestors(units: dict[str, FitUnit], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(units[name].after)
    while todo:
        unit = todo.pop()
        if unit not in seen:
            seen.add(unit)
            todo.extend(units[unit].after)
    return seen


def _composer_task_unit(task: TaskSpec, position: int, stages: list[Stage],
                        produced_by: dict[str, str]) -> FitUnit:
    """The one unit of a composer task: its composers, after the units that make their
    base and their skills (the driver adds the dataset's own dependency)."""
    needed = [task.base]
    for stage in stages:
        needed.extend(s for s in stage.skills if s != BASE and s not in needed)
    after = sorted({produced_by[name] for name in needed if name in produced_by})
    return FitUnit(name=task.name, task=task, position=position, dataset=dataset_name(task),
                   stages=stages, needs=needed, after=after)


def _plan(tasks: list[TaskSpec], stream: str, scale: str, continual: bool,
          seed: int, first_position: int = 0) -> StreamPlan:
    units: dict[str, FitUnit] = {}
    produced_by: dict[str, str] = {}  # store name -> unit that registers it
    plans: list[TaskPlan] = []
    for offset, task in enumerate(tasks):
        position = first_position + offset
        stages = _task_stages(task, seed, position)
        if task.role == "composer":
            # No skill of its own to start early: one unit waits for every skill composed.
            unit = _composer_task_unit(task, position, stages, produced_by)
            units[unit.name] = unit
            for produced in unit.produces():
                produced_by[produced] = unit.name
            plans.append(TaskPlan(task=task, position=position, dataset=dataset_name(task),
                                  units=[unit.name], items=task.stored_names()))
            continue
        main_stages = [s for s in stages if s.kind != "composer"]
        # A skill builds on its base; a base may start from another base's weights (init).
        builds_on = task.base if task.role == "skill" else task.init
        needs = [builds_on] if builds_on is not None else []
        after = [produced_by[builds_on]] if builds_on in produced_by else []
        main = FitUnit(name=task.name, task=task, position=position,
                       dataset=dataset_name(task), stages=main_stages, needs=needs,
                       after=after)
        units[main.name] = main
        task_units = [main.name]
        ready_units = _ancestors(units, main.name) | {main.name}
        for stage in (s for s in stages if s.kind == "composer"):
            stored = [s for s in stage.skills if s not in (BASE, task.name)]
            sources = {produced_by[s] for s in stored if s in produced_by}
            if sources <= ready_units:
                main.stages.append(stage)
                main.needs.extend(s for s in stored if s not in produced_by)
                continue
            unit = FitUnit(name=stage.name, task=task, position=position,
                           dataset=dataset_name(task), stages=[stage],
                           needs=[task.base, *stored, task.name],
                           after=sorted(sources | {main.name}))
            units[unit.name] = unit
            task_units.append(unit.name)
        for unit_name in task_units:
            for produced in units[unit_name].produces():
                produced_by[produced] = unit_name
        plans.append(TaskPlan(task=task, position=position, dataset=dataset_name(task),
                              units=task_units, items=task.stored_names()))
    return StreamPlan(stream=stream, scale=scale, continual=continual, tasks=plans, seed=seed,
                      units=units)


def plan_stream(stream: StreamSpec, take_shipped: bool = True) -> StreamPlan:
    """Stages and units of a validated stream (scale already applied). A base task that
    names a `shipped` folder is planned as the base that folder holds
    (`pipeline.shipped_base.take_shipped`) unless `take_shipped` is False."""
    from pipeline.shipped_base import take_shipped as taken

    tasks = [taken(task) for task in stream.tasks] if take_shipped else stream.tasks
    return _plan(tasks, stream.name, stream.applied_scale or "as-written",
                 stream.continual, stream.seed)


def plan_task(task: TaskSpec, bases: list[str], stream: str = "served",
              position: int = 0, seed: int = 0) -> StreamPlan:
    """A one-task continuation of the store (what `psec serve` runs for a submission).

    `bases` are the store's bases, oldest first. A skill (or composer) task without `base` goes on
    the newest one, as a stream's skill goes on the stream's latest base.
    """
    from pipeline.shipped_base import take_shipped

    task = take_shipped(task)
    if task.role != "base":
        if task.base is None:
            if not bases:
                raise SpecError("base", "the store holds no base to put this skill on")
            task = task.model_copy(update={"base": bases[-1]})
        elif task.base not in bases:
            raise StoreError(f"base {task.base!r} of task {task.name!r} is not in the store")
    return _plan([task], stream, "as-written", False, seed, first_position=position)
