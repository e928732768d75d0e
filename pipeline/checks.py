"""Every check of a plan against the store that can fail on user input: no Ray, no writes.

`check_plan` runs before a driver starts anything: the store must be writable, every
task's data dims must match its base's (ShapeError naming both), every item the plan
would register that is already in the store must come from the same task spec
(`same_fit`), and every dataset a task generates must have its generator and actors.
Any failure leaves the store untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from library.errors import PsecError, ShapeError, StoreError
from library.names import BASE
from library.store import ManifestEntry, SkillStore
from pipeline.plan import STREAM_SEED, StreamPlan
from tasks.spec import TaskSpec, dump, parse_task


@dataclass
class Checked:
    """What the checks learned: dims per task and datasets imported for the run."""

    dims: dict[str, tuple[int, int]]
    """(obs_dim, act_dim) of each task's data."""
    imported: dict[str, pa.Table]
    """Tables of `import` tasks, read during the checks and stored by the run."""


def _entry_dims(entry: ManifestEntry) -> tuple[int, int] | None:
    """(obs_dim, act_dim) of a stored item from its config summary, if recorded."""
    found: dict[str, int] = {}
    for key, value in entry.config_summary.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("obs_dim", "act_dim") and isinstance(value, int):
            found.setdefault(leaf, value)
    if len(found) == 2:
        return found["obs_dim"], found["act_dim"]
    return None


def _task_dims(task: TaskSpec, dataset: str, store: SkillStore,
               imported: dict[str, pa.Table]) -> tuple[int, int]:
    from tasks.dataset import dataset_meta
    from tasks.suites import get_suite

    if store.has_dataset(dataset):
        meta = dataset_meta(store.get_dataset_schema(dataset))
        if task.data.source == "generate":
            from tasks.generators.generator import check_stored

            check_stored(task, dataset, meta)  # not made from another spec or older actors
        return int(meta["obs_dim"]), int(meta["act_dim"])
    if task.data.source == "store":
        raise StoreError(f"task {task.name!r}: dataset {task.data.dataset!r} is not in the store")
    if task.data.source == "import":
        from tasks.dataset import dataset_meta as meta_of
        from tasks.dataset import limit_transitions
        from tasks.importers import import_dataset

        table = import_dataset(task.data.format, task.data.path, suite=task.suite,
                               env=task.env)
        if task.data.max_transitions is not None:
            table = limit_transitions(table, task.data.max_transitions)
        imported[task.name] = table
        meta = meta_of(table)
        return int(meta["obs_dim"]), int(meta["act_dim"])
    return get_suite(task.suite).dims(task.env, task.dynamics)


def _check_eval_envs(task: TaskSpec, dims: tuple[int, int]) -> None:
    """Every env in `eval.envs` must take the observations and actions of the task's data."""
    from tasks.suites import get_suite

    suite = get_suite(task.suite)
    for env in task.eval.envs or ():
        env_dims = suite.dims(env, task.dynamics)
        if env_dims != dims:
            raise ShapeError(f"task {task.name!r}: eval env {env!r} has obs/act dims "
                             f"{env_dims[0]}/{env_dims[1]} but the task's data has "
                             f"{dims[0]}/{dims[1]}")


def same_fit(stored_spec: dict[str, Any], task: TaskSpec, name: str) -> bool:
    """Whether item `name`, stored with task spec `stored_spec`, is what `task` would fit.

    Evaluation settings never change a fit, and a task's other composers do not change
    its skill or one another: a skill is shared by tasks that differ only there (e.g.
    tune's trials of different methods). A composer must match its own spec. The stored
    spec is read through the current model, so fields added since it was stored count
    at their defaults."""
    try:
        stored = parse_task(stored_spec)
    except PsecError:
        return False

    def fit_of(spec: TaskSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        data = dump(spec)
        own = [c for c in data.pop("composers") if c["name"] == name]
        data.pop("eval")
        return data, own

    return fit_of(stored) == fit_of(task)


def check_plan(plan: StreamPlan, store: SkillStore) -> Checked:
    """Every check that can fail on user input, before anything is written (an item that
    a run with another root seed fitted is one: a store holds one seed's run)."""
    from tasks.generators.generator import check_can_generate  # loads the experts registry

    store.check_writable()
    checked = Checked(dims={}, imported={})
    stored = {entry.name: entry for entry in store.list()}
    made_here: dict[str, str] = {}  # dataset made by the plan -> the task making it
    for task_plan in plan.tasks:
        task = task_plan.task
        for name in task_plan.items:
            entry = stored.get(name)
            if entry is not None and entry.task_spec is not None and \
                    not same_fit(entry.task_spec, task, name):
                raise StoreError(
                    f"{name!r} is in the store from a different spec of task {task.name!r} "
                    f"(another scale or an edited stream): remove it or rename the task")
            fitted_by = None if entry is None else entry.metrics.get(STREAM_SEED)
            if fitted_by is not None and fitted_by != plan.seed:
                raise StoreError(
                    f"{name!r} is in the store from a run with seed {fitted_by}, this run's "
                    f"seed is {plan.seed}: a store holds one seed's run (give each seed its "
                    f"own --store)")
        if task.data.source == "generate" and not store.has_dataset(task_plan.dataset):
            check_can_generate(task)
        if task.data.source == "store" and task_plan.dataset in made_here \
                and not store.has_dataset(task_plan.dataset):
            # A dataset an earlier task of the plan makes (e.g. the base's pretraining data
            # reused by a zero-shot composer): it has that task's dims.
            checked.dims[task.name] = checked.dims[made_here[task_plan.dataset]]
        else:
            checked.dims[task.name] = _task_dims(task, task_plan.dataset, store,
                                                 checked.imported)
            if task.data.source != "store":
                made_here[task_plan.dataset] = task.name
        _check_eval_envs(task, checked.dims[task.name])
    for task_plan in plan.tasks:
        task = task_plan.task
        if task.role == "base":
            continue
        base_dims = checked.dims.get(task.base)
        if base_dims is None:
            entry = stored.get(task.base)
            if entry is None:
                raise StoreError(f"base {task.base!r} of task {task.name!r} is not in the store")
            if entry.kind != "base":
                raise StoreError(f"{task.base!r} (base of task {task.name!r}) is a {entry.kind}")
            base_dims = _entry_dims(entry)
        dims = checked.dims[task.name]
        if base_dims is not None and dims != base_dims:
            raise ShapeError(
                f"task {task.name!r}: dataset {task_plan.dataset!r} has obs/act dims "
                f"{dims[0]}/{dims[1]} but base {task.base!r} has {base_dims[0]}/{base_dims[1]}")
    produced = {name for unit in plan.units.values() for name in unit.produces()}
    for unit in plan.units.values():
        for name in unit.needs:
            if name in produced or name == BASE:
                continue
            entry = stored.get(name)
            if entry is None:
                raise StoreError(f"unit {unit.name!r} needs {name!r}, which is not in the store")
            if entry.kind == "skill" and entry.parent != unit.task.base:
                raise StoreError(f"skill {name!r} sits on base {entry.parent!r}, task "
                                 f"{unit.task.name!r} on {unit.task.base!r}")
    return checked
