"""`psec tune SEARCH.yaml`: a Ray Tune search whose trials run the pipeline.

    load + check (no Ray) ──> prepare: datasets, base, stored-skill variants, controls
                          ──> Tuner: one trial per point ──> store results + Tune records

*Prepare.* Everything trials share is made once, before any trial starts, by the
pipeline itself (`pipeline.driver.run_plan` on a stream `<search>_prepare`): the base and
every stored skill the targets compose, refitted once per adapter variant (rank r, or
full-rank for PSEC(MLP)), plus every dataset size the points ask for. Two trials never
fit the same thing, and the shared items do not depend on which trial ran first. Method
`joint` trains on the union of a target's data and its base's, stored once here.

*Trials.* A trial is a Tune function trainable that hands its point to one Ray task,
`run_point`, which plans the point's single task (`tune.trials.trial_task`) and runs it
with `run_plan`: the fits are Ray Train runs and the rollouts Ray tasks, as in `psec run`,
and the trial reports the mean over evaluation seeds of the search's metric. With ASHA a
trial runs one plan per rung and reports after each. Trials that compose the same new
skill (methods and α choices on one task, variant, data size and seed) share its fit: a
trial that needs it while another is fitting it waits for that fit
(pipeline/fit_claims.py), and Tune starts the points that fit a new skill first
(`tune.trials.start_order`), so that such waits are rare.

*Resources, and why nothing deadlocks on 2 CPUs.* Tune starts every trial inside a
placement group and, by default, schedules the trial's own Ray tasks inside it. A trial
that reserved a CPU would hold it while its fit waits for one, and on 2 CPUs two such
trials would wait forever. So a trial reserves memory only (`resources.trial_memory_mb`),
`run_point` is launched outside the placement group and reserves no CPU, and the fits
(1 CPU per Ray Train worker) and rollouts (1 CPU each) take CPUs from the cluster like any
other work. Concurrency is sized from `ray.cluster_resources()`: by default as many
trials as CPUs, each trial's fits sized to its share (`FitOptions.concurrent_fits`).

*Resuming.* Tune's records live in the store, one experiment per scale
(`<store>/tune/<search>@<scale>/`), so `--resume` restores the scale's experiment with
`Tuner.restore`, and another scale of the search starts its own beside it; and since
trial items are named by a hash of their point, a restored or repeated trial finds what
it had registered and evaluated in the store, and a half-done fit resumes from its Ray
Train checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
import ray
from pydantic import BaseModel, ConfigDict

from library.errors import PsecError, StoreError
from library.names import BASE
from library.store import SkillStore
from pipeline.checkpoints import filesystem
from pipeline.driver import DriverOptions, make_dataset, run_plan, same_data_groups
from pipeline.evaluation import EvalJob, launch_evaluation, summarise_job
from pipeline.fit import psec_cause
from pipeline.fit_job import FitOptions
from pipeline.plan import plan_stream, plan_task
from pipeline.results import ResultRow, existing_keys, now, row_figures
from pipeline.runtime import connect
from pipeline.store_actor import StoreHandle
from pipeline.tblog import RunLog, run_name
from tasks.spec import StreamSpec, dump, parse_stream
from tune.spec import SearchSpec, find_composer, load_search, parse_search
from tune.trials import (
    TrialPoint,
    base_tasks,
    enumerate_points,
    joint_datasets,
    library_tasks,
    rung_tag,
    start_order,
    stream_name,
    subset_datasets,
    target_datasets,
    trial_task,
    variant_name,
)

TUNE_FOLDER = "tune"
"""Folder of the store that holds Tune experiments: `<store>/tune/<search>@<scale>/`."""
RECORD_FILE = "psec_search.json"
"""What `run_search` writes next to Tune's files: scale, machine, wall time."""
SCALE_MARK = "@"
"""Between a search's name and a scale in an experiment folder's name (`dsrl@paper-carrun`):
a search keeps one experiment per scale, so it can run a scale at a time (a column of a
table each) in one store. `@` is in no search's name."""
POINTS_FILE = "psec_points.json"
"""The grid an experiment was started with (its points' tags), written before it runs:
`--resume` restores that grid only, so a search edited since is refused."""


class SearchContext(BaseModel):
    """What every trial needs, as plain data (it travels to the trial actors)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    search: dict[str, Any]
    """The search spec, scale applied (`SearchSpec` dumped)."""
    stream: dict[str, Any]
    """The stream at the search's stream scale (`StreamSpec` dumped): trials never read
    the stream file, which a cluster's workers may not have."""
    store_uri: str
    """The skill store (absolute for a local folder)."""
    concurrent_fits: int
    """Fits sized to run side by side in the whole cluster (FitOptions.concurrent_fits)."""

    def specs(self) -> tuple[SearchSpec, StreamSpec]:
        return parse_search(self.search), parse_stream(self.stream)


@dataclass
class SearchSummary:
    """What a search did; `describe()` is what `psec tune` prints."""

    search: str
    scale: str
    store: str
    experiment: str
    """Where Tune's records are (`Tuner.restore` path)."""
    trials: int = 0
    completed: int = 0
    unfinished: int = 0
    """Trials that neither reported nor failed: the search was interrupted (`--resume`)."""
    errored: list[str] = field(default_factory=list)
    """`<tag> (<point>): <one-line error>` of every trial that failed."""
    best: str | None = None
    """The best trial's point and metric."""
    prepare_seconds: float = 0.0
    wall_seconds: float = 0.0

    def describe(self) -> str:
        lines = [f"search {self.search} ({self.scale}) into {self.store}: {self.completed} of "
                 f"{self.trials} trial(s) completed in {self.wall_seconds:.0f} s "
                 f"(prepare {self.prepare_seconds:.0f} s); Tune records in {self.experiment}"]
        if self.unfinished:
            lines.append(f"  {self.unfinished} trial(s) interrupted before they reported: "
                         "continue with --resume")
        if self.best is not None:
            lines.append(f"  best: {self.best}")
        lines += [f"  failed: {error}" for error in self.errored]
        return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def experiment_folder(store_uri: str, search: str, scale: str) -> str:
    """The folder under the store's tune/ that holds `search`'s experiment at `scale`:
    `<search>@<scale>`, or `<search>` where the search ran at that scale before
    experiments were kept per scale (its points file or record there names the scale)."""
    for name in (POINTS_FILE, RECORD_FILE):
        earlier = _read_search_file(store_uri, search, name)
        if earlier is not None:
            return search if earlier.get("scale") == scale else f"{search}{SCALE_MARK}{scale}"
    return f"{search}{SCALE_MARK}{scale}"


def experiment_path(store_uri: str, folder: str) -> str:
    """Tune's experiment folder (or URI) in the store: `folder` under tune/."""
    return SkillStore(store_uri).uri_of(TUNE_FOLDER, folder)


def read_record(store_uri: str, folder: str) -> dict[str, Any] | None:
    """The record `run_search` wrote beside the experiment in `folder`, or None."""
    return _read_search_file(store_uri, folder, RECORD_FILE)


def search_records(store_uri: str, search: str) -> list[dict[str, Any]]:
    """The records of every scale `search` ran at in the store, oldest finish first."""
    fs, path = filesystem(SkillStore(store_uri).uri_of(TUNE_FOLDER))
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    folders = [info.base_name for info in fs.get_file_info(pafs.FileSelector(path))
               if info.type == pafs.FileType.Directory and
               info.base_name.split(SCALE_MARK, 1)[0] == search]
    records = [read_record(store_uri, folder) for folder in folders]
    return sorted((r for r in records if r is not None), key=lambda r: str(r.get("finished")))


def _read_search_file(store_uri: str, folder: str, name: str) -> dict[str, Any] | None:
    """JSON file `name` that `run_search` wrote beside the experiment in `folder`, or None."""
    data = SkillStore(store_uri).get_file(f"{TUNE_FOLDER}/{folder}", name)
    if data is None:
        return None
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise StoreError(f"search record {TUNE_FOLDER}/{folder}/{name} in the store at "
                         f"{store_uri} is not valid JSON ({error}): delete it and run the "
                         "search again") from None


def _write_record(store_uri: str, folder: str, record: dict[str, Any]) -> None:
    SkillStore(store_uri).put_file(f"{TUNE_FOLDER}/{folder}", RECORD_FILE,
                                   json.dumps(record, indent=1).encode())


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line saying where a measurement was taken."""
    resources = ray.cluster_resources() if ray.is_initialized() else {}
    cpus = int(resources.get("CPU", os.cpu_count() or 0))
    gpus = int(resources.get("GPU", 0))
    nodes = len([n for n in ray.nodes() if n.get("Alive")]) if ray.is_initialized() else 1
    return (f"{_cpu_model()} ({platform.system()}), Ray cluster of {nodes} node(s) with "
            f"{cpus} CPU(s){f' and {gpus} GPU(s)' if gpus else ', no GPU'}")


def main_item(task_name: str, composer_names: list[str]) -> str:
    """The item whose score a trial reports: its composer, or the scratch policy."""
    return composer_names[0] if composer_names else task_name


def trial_metric(results, stream: str, item: str, eval_task: str, metric: str) -> float | None:
    """Mean over evaluation seeds of `metric` for `item` on `eval_task` in `stream`."""
    if results.num_rows == 0:
        return None
    values = [row[metric] for row in results.to_pylist()
              if row["stream"] == stream and row["name"] == item
              and row["eval_task"] == eval_task and row.get(metric) is not None]
    return sum(values) / len(values) if values else None


# ---------------------------------------------------------------------------- trials


@ray.remote(num_cpus=0, max_retries=0)
def run_point(context: dict[str, Any], point: dict[str, Any], fraction: float,
              rung: int | None) -> dict[str, Any]:
    """Fit and evaluate one trial point (at `fraction` of its steps); its metrics."""
    ctx = SearchContext.model_validate(context)
    search, stream = ctx.specs()
    trial = TrialPoint.model_validate(point)
    task = trial_task(search, stream, trial, fraction, rung)
    name = stream_name(search, trial, rung)
    bases = [task.base] if task.base is not None else []
    plan = plan_task(task, bases, stream=name, seed=trial.seed)
    options = DriverOptions(fit=FitOptions(concurrent_fits=ctx.concurrent_fits), progress=False,
                            result_tags={"search": search.name,
                                         "trial": rung_tag(trial.tag(), rung)})
    summary = run_plan(plan, ctx.store_uri, options)
    item = main_item(task.name, [c.name for c in task.composers])
    value = trial_metric(SkillStore(ctx.store_uri).results(), name, item, task.name,
                         search.metric)
    if value is None:
        raise StoreError(f"trial {name}: no {search.metric!r} recorded for {item!r}")
    with RunLog(ctx.store_uri, run_name(name, trial.method, trial.seed)) as log:
        log.scalars({search.metric: value}, rung if rung is not None else len(
            search.searcher.rungs) - 1, prefix="tune/")
    return {search.metric: value, "item": item, "stream": name, "fraction": fraction,
            "fit_seconds": sum(summary.stage_seconds.values()),
            "driver_seconds": summary.wall_seconds}


def _trainable(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Tune's function trainable: one report per rung."""
    from ray import tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    rungs = context["search"]["searcher"]["rungs"]
    # Outside the trial's placement group: see the module docstring.
    escape = PlacementGroupSchedulingStrategy(placement_group=None)
    for index, fraction in enumerate(rungs):
        rung = None if index == len(rungs) - 1 else index
        ref = run_point.options(scheduling_strategy=escape).remote(
            context, config["point"], fraction, rung)
        metrics = ray.get(ref)
        tune.report({**metrics, "rung": index})


# --------------------------------------------------------------------------- prepare


def _control_jobs(search: SearchSpec, stream: StreamSpec, points: list[TrialPoint],
                  done: set) -> list[EvalJob]:
    """`single` controls: each stored skill (per variant) and the base alone on a target."""
    jobs: list[EvalJob] = []
    controls = f"{search.name}_controls"
    seen: set[tuple[str, str]] = set()
    for point in points:
        if point.variant is None:
            continue
        task, composer = find_composer(stream, search.target(point.target).composer, "targets")
        items = [task.base if s == BASE else variant_name(s, point.variant)
                 for s in composer.skills]
        for item in items:
            if (item, task.name) in seen:
                continue
            seen.add((item, task.name))
            seeds = [s for s in task.eval.seeds
                     if (controls, task.name, item, task.name, s) not in done]
            if seeds:
                jobs.append(EvalJob(item=item, task=task.model_copy(update={"composers": []}),
                                    row_task=task.name, position=0, seeds=seeds))
    return jobs


def _run_controls(search: SearchSpec, jobs: list[EvalJob], store_uri: str) -> None:
    if not jobs:
        return
    store = StoreHandle(store_uri)
    resources = ray.cluster_resources()
    refs = {id(job): launch_evaluation(store, job, resources) for job in jobs}
    rows = []
    for job in jobs:
        stats = [episode for chunk in ray.get(refs[id(job)]) for episode in chunk]
        entry = store.entry(job.item)
        for seed, summary in sorted(summarise_job(job, stats).items()):
            rows.append(ResultRow(
                stream=f"{search.name}_controls", task=job.row_task, position=0,
                name=job.item, kind=entry.kind, method="base" if entry.kind == "base" else "skill",
                composer=None, skills=[] if entry.kind == "base" else [job.item], seed=seed,
                eval_task=job.task.name, **row_figures(summary),
                steps=int(entry.metrics.get("train_steps") or 0),
                wall_s=float(entry.metrics.get("train_seconds") or 0.0),
                scale=search.stream_scale or "as-written", time=now(),
                search=search.name).model_dump(mode="json"))
    store.append_results(rows)


def prepare(search: SearchSpec, stream: StreamSpec, points: list[TrialPoint], store_uri: str,
            options: DriverOptions) -> None:
    """Datasets, the base and the stored-skill variants the points share; controls."""
    store = SkillStore(store_uri)
    handle = StoreHandle(store.uri)
    datasets = target_datasets(search, stream, points)
    for name, task in datasets.items():
        if task.data.source == "generate" and store.has_dataset(name):
            from tasks.dataset import dataset_meta
            from tasks.generators.generator import check_stored

            check_stored(task, name, dataset_meta(store.get_dataset_schema(name)))
    to_make = [(name, task) for name, task in datasets.items() if not store.has_dataset(name)]
    refs = [make_dataset.remote(dump(task), names, handle, None)
            for task, names in same_data_groups(to_make, imported={})]
    for _, notes in ray.get(refs):
        for note in notes:
            print(f"psec tune: warning: {note}", file=sys.stderr, flush=True)
    tasks = base_tasks(search, stream, points) + library_tasks(search, stream, points)
    shared = parse_stream({"name": f"{search.name}_prepare", "continual": False,
                           "seed": stream.seed, "tasks": [dump(t) for t in tasks],
                           "scales": {"smoke": {}, "paper": {}},
                           "applied_scale": stream.applied_scale})
    run_plan(plan_stream(shared), store.uri, options)
    for name, (source, target, limit) in joint_datasets(search, stream, points).items():
        if not store.has_dataset(name):  # the base's dataset exists now: it was fitted on
            from tasks.dataset import union

            handle.put_dataset(name, union({source: store.get_dataset(source),
                                            target: store.get_dataset(target)},
                                           limits={target: limit}))
    for name, (source, selection, composer, limit) in subset_datasets(
            search, stream, points).items():
        if not store.has_dataset(name):  # the target's dataset was generated above
            from tasks.dataset import limit_transitions
            from tasks.subsets import composer_subset

            table = store.get_dataset(source)
            table = table if limit is None else limit_transitions(table, limit)
            handle.put_dataset(name, composer_subset(table, selection, composer))
    if "single" in search.controls:
        _run_controls(search, _control_jobs(search, stream, points,
                                            existing_keys(store.results())), store.uri)


# ------------------------------------------------------------------------ entry point


def _concurrency(search: SearchSpec) -> int:
    wanted = search.resources.max_concurrent_trials
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    return cpus if wanted == "auto" else wanted


def _tuner(search: SearchSpec, context: SearchContext, points: list[TrialPoint],
           folder: str, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    trainable = tune.with_resources(
        tune.with_parameters(_trainable, context=context.model_dump(mode="json")),
        {"cpu": 0, "memory": search.resources.trial_memory_mb * 2**20})
    if resume:
        return tune.Tuner.restore(experiment_path(context.store_uri, folder),
                                  trainable=trainable, resume_unfinished=True,
                                  resume_errored=True)
    space = [point.model_dump(mode="json") for point in start_order(points)]
    searcher = search.searcher
    param_space = {"point": tune.grid_search(space) if searcher.kind == "grid"
                   else tune.choice(space)}
    scheduler = None
    if searcher.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=len(searcher.rungs),
                                  grace_period=1, reduction_factor=searcher.reduction_factor)

    def trial_name(trial) -> str:
        point = TrialPoint.model_validate(trial.config["point"])
        return f"{point.tag()}_{trial.trial_id}"

    # Not split from `experiment`: a remote store's URI ends in its query (endpoint, region).
    root, name = SkillStore(context.store_uri).uri_of(TUNE_FOLDER), folder
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=search.metric, mode=search.mode, scheduler=scheduler,
            num_samples=1 if searcher.kind == "grid" else searcher.num_samples,
            max_concurrent_trials=context.concurrent_fits, trial_name_creator=trial_name,
            trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=name, storage_path=root, verbose=1))


def _experiment_exists(experiment: str) -> bool:
    """Whether Tune wrote anything at `experiment` (psec's own files do not count: the
    points file is written before Tune starts)."""
    fs, path = filesystem(experiment)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    ours = {RECORD_FILE, POINTS_FILE}
    return any(info.base_name not in ours for info in fs.get_file_info(pafs.FileSelector(path)))


def _check_same_grid(store: SkillStore, search: str, folder: str, scale: str,
                     tags: list[str], experiment: str) -> None:
    """PsecError if the experiment was started with another grid than `tags` (Tune's
    restore would silently run the old one). Experiments from before POINTS_FILE pass."""
    started = _read_search_file(store.uri, folder, POINTS_FILE)
    if started is None:
        return
    before, now = set(started["points"]), set(tags)
    if before != now:
        raise PsecError(
            f"search {search!r} has another grid now than when its experiment started "
            f"(scale {started['scale']!r} then, {scale!r} now; {len(now - before)} point(s) "
            f"added, {len(before - now)} removed): --resume runs only the old grid; remove "
            f"{experiment} and run without --resume (trials stored already are found, not "
            "refitted)")


def _open_experiment(search: SearchSpec, store: SkillStore, scale: str,
                     points: list[TrialPoint], resume: bool) -> str:
    """The experiment's folder under tune/: a fresh one (its grid recorded) or, with
    `resume`, the one that ran before at this scale with the same grid."""
    folder = experiment_folder(store.uri, search.name, scale)
    experiment = experiment_path(store.uri, folder)
    exists = _experiment_exists(experiment)
    if resume and not exists:
        raise PsecError(f"search {search.name!r} has no Tune experiment at scale {scale!r} "
                        f"at {experiment} to resume: run it without --resume")
    if not resume and exists:
        raise PsecError(f"search {search.name!r} already ran at scale {scale!r} in this store "
                        f"({experiment}): continue it with --resume, or remove that folder to "
                        "start afresh (trials stored already are found, not refitted)")
    tags = sorted({point.tag() for point in points})
    if resume:
        _check_same_grid(store, search.name, folder, scale, tags, experiment)
    else:
        store.put_file(f"{TUNE_FOLDER}/{folder}", POINTS_FILE,
                       json.dumps({"scale": scale, "points": tags}).encode())
    return folder


def _summarise(grid, search: SearchSpec, summary: SearchSummary) -> None:
    """Count the grid's completed and errored trials into `summary`, and name the best.
    Every other trial of the search (`summary.trials`) is unfinished: one that neither
    reported nor failed, one restored by `--resume` that never started again (Tune gives
    it no config), or one Tune never created before an interrupt."""
    best_value = None
    for result in grid:
        if not result.config:
            continue
        point = TrialPoint.model_validate(result.config["point"])
        if result.error is not None:
            cause = psec_cause(result.error)
            message = " ".join(str(cause or result.error).split())[:300]
            summary.errored.append(f"{point.tag()} ({point.describe()}): {message}")
            continue
        value = (result.metrics or {}).get(search.metric)
        if value is None:  # every finished trial reports it (run_point): this one did not
            continue
        summary.completed += 1
        better = best_value is None or (value > best_value if search.mode == "max"
                                        else value < best_value)
        if better:
            best_value = value
            summary.best = f"{point.describe()}: {search.metric} {value:.4g}"
    summary.unfinished = max(0, summary.trials - summary.completed - len(summary.errored))


def run_search(path: str, store_uri: str, resume: bool = False, scale: str = "smoke",
               address: str | None = None) -> SearchSummary:
    """`psec tune`: check the search, prepare what trials share, run (or resume) the
    Tune experiment, record scale, machine and wall time next to it. The store is this
    driver's alone meanwhile (pipeline/store_lease.py)."""
    from pipeline.store_lease import driver_lease

    with driver_lease(store_uri, f"psec tune {path}"):
        return _run_search(path, store_uri, resume, scale, address)


def _run_search(path: str, store_uri: str, resume: bool, scale: str,
                address: str | None) -> SearchSummary:
    started = time.perf_counter()
    search = load_search(path, scale)
    stream = search.load_stream()
    points = enumerate_points(search)
    store = SkillStore(store_uri)
    store.check_writable()
    folder = _open_experiment(search, store, scale, points, resume)
    experiment = experiment_path(store.uri, folder)
    connect(address)
    concurrency = _concurrency(search)
    options = DriverOptions(fit=FitOptions(concurrent_fits=concurrency))
    prepare(search, stream, points, store.uri, options)
    prepared = time.perf_counter() - started
    context = SearchContext(search=dump(search), stream=dump(stream), store_uri=store.uri,
                            concurrent_fits=concurrency)
    grid = _tuner(search, context, points, folder, resume).fit()
    summary = SearchSummary(search=search.name, scale=scale, store=store.uri,
                            experiment=experiment, trials=len(points),
                            prepare_seconds=prepared)
    _summarise(grid, search, summary)
    summary.wall_seconds = time.perf_counter() - started
    # A record without Tune's state is a committed store continued on another machine
    # (stores/README.md): its earlier runs' time counts, as a resumed one's does.
    earlier = read_record(store.uri, folder)
    total = summary.wall_seconds + float((earlier or {}).get("wall_seconds") or 0.0)
    _write_record(store.uri, folder, {
        "search": search.name, "scale": scale, "source": path, "machine": machine(),
        "wall_seconds": round(total, 1),
        "prepare_seconds": round(prepared, 1), "trials": summary.trials,
        "completed": summary.completed, "errored": len(summary.errored),
        "finished": now(), "resumed": resume})
    return summary
