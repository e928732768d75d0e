"""Shipped bases: a base trained across sessions, committed, and taken by streams.

A base at the paper's budget (1M steps at batch 1024) is hours of a CPU machine, more
than one working session, so `psec base train` trains it in pieces into a folder of the
repository (`bases/<task>/`): every call continues from the folder's checkpoint, stops at
a checkpoint when its time is up, and leaves the base as trained so far in the folder,
which is a skill store holding that one item. A stream's base task that names the folder
(`shipped: bases/walker-stand`) takes the base from it instead of fitting one
(`install`), so a user and the README's main job start from hours of training.

The folder:

    bases/<task>/manifest/<task>.json, items/<task>/   the base so far (EMA weights)
    bases/<task>/training/state.pt + progress.json     learner and Adam state (resumable)
    bases/<task>/datasets/                             the pretraining data (not committed:
                                                       regenerated from the spec, same bytes)

Training is the stream's own base fit (`pipeline.fit` builds it the same way, from the
same plan and seeds): the same step gets the same batch and noise whichever call runs it,
so a base trained in ten pieces is the base trained in one. The stored item's task spec
says what it really had: `train.steps` are the steps done, and `train.lr_decay` is
rescaled so that the cosine horizon (lr_decay × steps) is the planned one.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict

from library.errors import SpecError, StoreError
from library.store import SkillStore
from pipeline.plan import FitUnit, dataset_name, plan_stream
from tasks.spec import StreamSpec, TaskSpec, dump, load_stream, parse_task

TRAINING = "training"
STATE_FILE = "state.pt"
PROGRESS_FILE = "progress.json"


class Progress(BaseModel):
    """Where a shipped base's training stands (`training/progress.json`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    task: str
    """The base task's name (the item's name)."""
    spec: dict[str, Any]
    """The base task's spec at its scale, as planned: training of another spec (its
    evaluation and `shipped` aside) is never continued."""
    seed: int
    """The fit's seed (the stage seed `psec run` gives it)."""
    planned_steps: int
    """Steps the plan asks for (e.g. the paper's 1M)."""
    steps: int
    """Steps done."""
    seconds: float
    """Training time summed over every call."""
    calls: list[dict[str, Any]]
    """One record per call: steps from and to, seconds, threads, steps/s, loss."""
    command: str
    """The command that continues (or, from an empty folder, retrains) it."""


def base_unit(stream: StreamSpec, task_name: str) -> FitUnit:
    """The fit unit of base task `task_name` as `psec run` plans it (same stage seed)."""
    plan = plan_stream(stream, take_shipped=False)
    for unit in plan.units.values():
        if unit.task.name == task_name:
            if unit.task.role != "base":
                raise SpecError("--task", f"{task_name!r} is a {unit.task.role} task, not a base")
            if [stage.kind for stage in unit.stages] != ["base"]:
                raise SpecError("--task", f"base {task_name!r} fits critics too: a shipped base "
                                "is a plain base fit (train it with psec run)")
            return unit
    names = ", ".join(task.name for task in stream.tasks)
    raise SpecError("--task", f"no task {task_name!r} in stream {stream.name!r} (tasks: {names})")


def fit_fields(task: TaskSpec) -> dict[str, Any]:
    """What decides a base fit: the spec without its evaluation and `shipped` folder,
    read through the current model (fields added since count at their defaults)."""
    data = dump(parse_task(dump(task)))
    data.pop("eval")
    data.pop("shipped")
    return data


def _read_progress(store: SkillStore) -> Progress | None:
    data = store.get_file(TRAINING, PROGRESS_FILE)
    return None if data is None else Progress.model_validate_json(data)


def _save(store: SkillStore, progress: Progress, learner_state: dict,
          optimizer_state: dict) -> None:
    """State first, progress last (each written atomically by the store): a call killed in
    between leaves the old progress, whose step the new state is ahead of, so the state
    carries its own step and wins."""
    buffer = io.BytesIO()
    torch.save({"step": progress.steps, "learner": learner_state, "optimizer": optimizer_state},
               buffer)
    store.put_file(TRAINING, STATE_FILE, buffer.getvalue())
    store.put_file(TRAINING, PROGRESS_FILE, (progress.model_dump_json(indent=2) + "\n").encode())


def _load_state(store: SkillStore) -> dict[str, Any]:
    return torch.load(io.BytesIO(store.get_file(TRAINING, STATE_FILE)), weights_only=True)


def shipped_spec(task: TaskSpec, steps: int) -> TaskSpec:
    """The task spec a base trained `steps` of its planned steps is stored with."""
    horizon = task.train.lr_decay * task.train.steps
    train = task.train.model_copy(update={
        "steps": steps, "lr_decay": horizon / steps if task.train.lr_decay else 0.0})
    return parse_task(dump(task.model_copy(update={"train": train})))


def train_command(stream_path: str, task: str, scale: str | None, folder: Path) -> str:
    scale_part = f" --scale {scale}" if scale else ""
    return f"psec base train {stream_path} --task {task}{scale_part} --out {folder}"


def train_base(stream_path: str, task_name: str, folder: Path, scale: str | None = "paper",
               minutes: float | None = None, until: int | None = None, threads: int = 2,
               checkpoint_every: int = 2000, log=print) -> Progress:
    """Continue (or start) training base `task_name` of the stream into `folder` until
    `until` steps (default: the planned steps) or, at the first checkpoint after
    `minutes`, stop; then store the base as trained so far in the folder."""
    from library.training import train
    from pipeline.stages import UnitContext
    from pipeline.unit_loop import lr_decay_steps

    if checkpoint_every < 1:
        raise SpecError("--checkpoint-every", f"must be a positive integer, got {checkpoint_every}")
    stream = load_stream(stream_path, scale)
    unit = base_unit(stream, task_name)
    task, stage = unit.task, unit.stages[0]
    target = stage.steps if until is None else min(until, stage.steps)
    store = SkillStore(str(folder))
    progress = _read_progress(store)
    if progress is not None and (progress.seed != stage.seed or
                                 fit_fields(parse_task(progress.spec)) != fit_fields(task)):
        raise StoreError(f"{folder} holds the training of another plan of {progress.task!r} "
                         f"(a changed spec, scale or seed): move it away to start afresh")

    _ensure_dataset(store, task, log)
    torch.set_num_threads(threads)
    context = UnitContext(store, unit, torch.device("cpu"))
    if progress is not None:
        _check_same_data(store, task.name, context.fingerprint, folder)
    torch.manual_seed(stage.seed)  # the initial weights of the stream's own fit
    learner = context.build(stage)
    if progress is None:
        progress = Progress(task=task.name, spec=dump(task), seed=stage.seed,
                            planned_steps=stage.steps, steps=0, seconds=0.0, calls=[],
                            command=train_command(stream_path, task.name, scale, folder))
        optimizer_state = None
    else:
        optimizer_state = _resume(store, learner, progress)
    data = context.data_for(stage)
    start, started = progress.steps, time.perf_counter()
    deadline = None if minutes is None else started + 60 * minutes
    log(f"{task.name}: step {start} of {stage.steps} (target {target}), batch "
        f"{stage.batch_size}, {len(data.obs)} transitions, {threads} threads")
    loss = float("nan")
    while progress.steps < target and (deadline is None or time.perf_counter() < deadline):
        end = min(target, (progress.steps // checkpoint_every + 1) * checkpoint_every)
        chunk_started = time.perf_counter()
        result = train(learner, data, end, stage.batch_size, stage.lr, seed=stage.seed,
                       start_step=progress.steps, optimizer_state=optimizer_state,
                       log_every=min(500, end - progress.steps),
                       lr_decay_steps=lr_decay_steps(stage, task))
        optimizer_state, loss = result.optimizer_state, result.terms["loss"]
        progress.seconds += time.perf_counter() - chunk_started
        progress.steps = end
        _save(store, progress, learner.state_dict(), optimizer_state)
        log(f"  step {end}: loss {loss:.4f}, {(end - start) / (time.perf_counter() - started):.1f}"
            " steps/s")
    seconds = time.perf_counter() - started
    if progress.steps > start:
        progress.calls.append({
            "from": start, "to": progress.steps, "seconds": round(seconds, 1),
            "threads": threads, "steps_per_s": round((progress.steps - start) / seconds, 2),
            "loss": round(loss, 5)})
        _save(store, progress, learner.state_dict(), optimizer_state)
        _store_base(store, learner, task, stage, progress, len(data.obs), context.fingerprint)
    return progress


def _check_same_data(store: SkillStore, name: str, fingerprint: str, folder: Path) -> None:
    """StoreError unless the base stored in the folder was trained on the table `fingerprint`
    names. The folder's dataset is not committed with it (.gitignore), so a checkout
    regenerates it, and the actors in tasks/experts may have changed since (a retrained
    medium actor): the training must not go on on other data."""
    if not store.exists(name):
        return  # killed before its first piece was stored: nothing to compare
    trained_on = store.entry(name).dataset_fingerprint
    if trained_on is not None and trained_on != fingerprint:
        raise StoreError(f"{folder} was trained on another table than the {name} dataset "
                         "generated now (the actors in tasks/experts or the data spec changed): "
                         "move it away to start afresh")


def _resume(store: SkillStore, learner, progress: Progress) -> dict:
    """Load the folder's training state into `learner` and `progress`: Adam's state."""
    state = _load_state(store)
    learner.load_state_dict(state["learner"])
    progress.steps = state["step"]
    return state["optimizer"]


def _ensure_dataset(store: SkillStore, task: TaskSpec, log) -> None:
    """The base's dataset in the folder's store: checked against the spec if there, else
    generated (the stream's own, as `psec run` would make it)."""
    from tasks.generators.generator import check_stored, generate

    dataset = dataset_name(task)
    if store.has_dataset(dataset):
        from tasks.dataset import dataset_meta

        check_stored(task, dataset, dataset_meta(store.get_dataset_schema(dataset)))
        return
    started = time.perf_counter()
    log(f"generating the {task.name} dataset ({task.data.episodes} episodes, "
        f"{task.data.policy} policy)")
    store.put_dataset(dataset, generate(task))
    log(f"  stored in {time.perf_counter() - started:.0f} s")


def _store_base(store: SkillStore, learner, task: TaskSpec, stage, progress: Progress,
                transitions: int, fingerprint: str) -> None:
    """The base as trained so far, in the folder's store (replacing the previous one)."""
    from pipeline.stages import UnitContext

    spec = shipped_spec(task, progress.steps)
    config, tensors = UnitContext.policy_item(stage, learner)
    metrics = {"train_steps": progress.steps, "planned_steps": progress.planned_steps,
               "train_seconds": round(progress.seconds, 1), "train_transitions": transitions,
               "command": progress.command}
    store.register(task.name, "base", config, tensors, task_spec=dump(spec),
                   dataset_fingerprint=fingerprint, metrics=metrics, overwrite=True)


# ------------------------------------------------------------------------ the command


def add_parser(commands) -> None:
    """`psec base train`: add the command to psec's subcommands."""
    from pipeline.cli import _positive

    base = commands.add_parser("base", help="bases trained across sessions and shipped")
    actions = base.add_subparsers(dest="base_command", required=True, metavar="ACTION")
    training = actions.add_parser(
        "train", help="continue training a stream's base into a folder (resumable)")
    training.add_argument("stream", metavar="STREAM.yaml")
    training.add_argument("--task", required=True, help="the stream's base task")
    training.add_argument("--scale", default="paper", help="the stream's scale (default paper)")
    training.add_argument("--out", type=Path, default=None,
                          help="the shipped-base folder (default bases/<task>)")
    training.add_argument("--minutes", type=float, default=None,
                          help="stop at the first checkpoint after this long (default: no limit)")
    training.add_argument("--until", type=_positive, default=None,
                          help="stop at this many steps (default: the planned steps)")
    training.add_argument("--threads", type=_positive, default=2, help="torch threads")
    training.add_argument("--checkpoint-every", type=_positive, default=2000,
                          help="steps between checkpoints (default 2000)")
    training.set_defaults(handler=_train)


def _train(args) -> int:
    folder = args.out if args.out is not None else Path("bases") / args.task
    progress = train_base(args.stream, args.task, folder, scale=args.scale,
                          minutes=args.minutes, until=args.until, threads=args.threads,
                          checkpoint_every=args.checkpoint_every)
    print(f"{progress.task}: {progress.steps} of {progress.planned_steps} steps "
          f"({progress.seconds / 3600:.2f} h of training) in {folder}")
    return 0


# ------------------------------------------------------------------- taking a shipped base


def _shipped_entry(task: TaskSpec):
    """The manifest entry of the base `task.shipped` holds; StoreError if there is none."""
    folder = Path(task.shipped)
    hint = f"train it with: psec base train STREAM.yaml --task {task.name} --out {folder}"
    if not folder.is_dir():
        raise StoreError(f"task {task.name!r}: shipped base folder {folder} does not exist "
                         f"({hint})")
    store = SkillStore(str(folder))
    if not store.exists(task.name):
        raise StoreError(f"task {task.name!r}: {folder} holds no base {task.name!r} ({hint})")
    entry = store.entry(task.name)
    if entry.kind != "base" or entry.task_spec is None:
        raise StoreError(f"task {task.name!r}: {task.name!r} in {folder} is not a shipped base "
                         f"(a {entry.kind} without its task spec)")
    return store, entry


def take_shipped(task: TaskSpec) -> TaskSpec:
    """`task` as the base its `shipped` folder holds: the training it had there (steps,
    cosine horizon) replaces the task's own; every other field that decides the fit must
    agree, or the folder holds another base (StoreError naming the first field)."""
    if task.shipped is None:
        return task
    _, entry = _shipped_entry(task)
    shipped = parse_task(entry.task_spec)
    ours, theirs = fit_fields(task), fit_fields(shipped)
    for key in ("steps", "lr_decay"):
        ours["train"].pop(key)
        theirs["train"].pop(key)
    for key in ours:
        if ours[key] != theirs[key]:
            raise StoreError(f"task {task.name!r}: the base in {task.shipped} was trained with "
                             f"another {key} ({theirs[key]}, the task asks {ours[key]}): "
                             "retrain it, or drop `shipped` to fit this task's own")
    return task.model_copy(update={"train": shipped.train})


def install(task: TaskSpec, store: SkillStore) -> bool:
    """Copy the shipped base of `task` into `store` unless it is there; True if copied.
    The weights are checked against their sha256 on the way (SkillStore.load)."""
    if task.shipped is None or store.exists(task.name):
        return False
    source, entry = _shipped_entry(task)
    config, tensors = source.load(task.name)
    store.register(task.name, "base", config, tensors, task_spec=dump(task),
                   dataset_fingerprint=entry.dataset_fingerprint,
                   metrics={**entry.metrics, "shipped_from": str(task.shipped)})
    return True
