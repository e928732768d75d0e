"""Fit units on Ray: one TorchTrainer per unit of several workers, sized from the cluster.

`launch_fit` starts a Ray task per unit, so several units run at once: `fit_unit` builds a
`TorchTrainer` whose workers run `unit_loop`: every stage of the unit in order, through
`library.training.train`. A unit sized to ONE worker runs the same loop in one plain Ray
task instead (`FitOptions.single_worker`, default "task"): a TorchTrainer around a single
worker averages no gradients, yet costs ~10 s of start-up and shut-down and six helper
actors that take CPU from the fits beside it (docs/BENCHMARKS.md). The task reserves the
worker's CPUs (and GPUs), writes the same checkpoints itself under the same folder, and
Ray retries it `max_failures` times when its process dies, resuming from the latest one.
On each worker:

* torch threads = the worker's CPUs (Ray sets OMP_NUM_THREADS, torch does not follow it);
* with more than one worker, gradients are averaged with `torch.distributed.all_reduce`
  in `train`'s `grad_hook`, each worker drawing its own batches (its own seed) of
  batch_size / workers transitions;
* every `checkpoint_every` steps each worker calls `ray.train.report`, rank 0 with a
  checkpoint (stage index, step, learner and Adam state, critics fitted earlier in the
  unit). `FailureConfig(max_failures)` restarts a failed worker group from it, and Ray
  Train restores the latest checkpoint of a run by its name, so a driver that was killed
  resumes a half-done unit too;
* rank 0 writes: TensorBoard scalars and the registration through the store actor.

Checkpoints live under `<store>/checkpoints/<stream>__<unit>/` (the RunConfig
storage_path: a folder for a local store, the URI for a remote one) and are deleted when
the unit is done: the store is then the record. A checkpoint of a different plan (the
spec changed) is ignored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from typing import Any, Literal

import pyarrow.fs as pafs
import ray
import torch
from pydantic import BaseModel, ConfigDict

from library.errors import DataError, PsecError, TrainingDiverged
from pipeline.plan import FitUnit
from pipeline.progress import ProgressReporter
from pipeline.runtime import FitResources, plan_fit_resources
from pipeline.store_actor import StoreHandle

CHECKPOINTS_FOLDER = "checkpoints"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


class FailurePoint(BaseModel):
    """Where a fault test kills a worker on purpose (once per run)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    stage: str
    """Name of the stage during which to fail."""
    step: int
    """Fail at the first progress report at or after this step of that stage."""


class FitOptions(BaseModel):
    """How the driver runs fits; the same for every unit of a run."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    concurrent_fits: int = 2
    """Fits sized to run side by side (each gets 1/concurrent_fits of the cluster)."""
    max_failures: int = 2
    """Worker-group failures a fit recovers from (Ray Train FailureConfig)."""
    checkpoints_per_stage: int = 5
    """Checkpoints taken during a stage (plus one at its end)."""
    checkpoint_every: int | None = None
    """Steps between checkpoints; overrides checkpoints_per_stage when set."""
    log_every: int = 100
    """Steps between progress reports and TensorBoard points."""
    cpus_per_worker: int | None = None
    """CPUs per Ray Train worker (default: sized from the cluster)."""
    single_worker: Literal["task", "trainer"] = "task"
    """How a unit sized to one worker runs: task = the unit loop in one plain Ray task
    (same checkpoints, resume and retries, without a TorchTrainer's start-up and helper
    actors); trainer = a TorchTrainer of one worker, like larger units."""
    fail_at: FailurePoint | None = None
    """Fault tests only: kill a worker once at this point."""


class FitJob(BaseModel):
    """Everything `unit_loop` receives (as plain data, through train_loop_config)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    stream: str
    """Stream name (run names, TensorBoard)."""
    stream_seed: int
    """Root seed of the stream (TensorBoard run names)."""
    unit: FitUnit
    """What to fit."""
    workers: int
    """Ray Train workers."""
    cpus_per_worker: int
    """CPUs (and torch threads) per worker."""
    gpus_per_worker: float
    """GPUs per worker (0 on CPU clusters)."""
    options: FitOptions
    """Checkpointing, logging and fault injection."""

    @property
    def run_name(self) -> str:
        return f"{self.stream}__{self.unit.name}"

    def fingerprint(self) -> str:
        """Identifies the plan of the unit; checkpoints of another plan are not resumed."""
        data = self.unit.model_dump(mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


class FitReport(BaseModel):
    """What a finished unit hands back to the driver."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    unit: str
    """Unit name."""
    registered: list[str]
    """Store names the unit registered (stages already stored before are not listed)."""
    skipped: list[str]
    """Stages that were already in the store."""
    stage_seconds: dict[str, float]
    """Wall seconds of each stage fitted now (steps only, without trainer start-up)."""
    wall_seconds: float
    """Seconds from submitting the fit (TorchTrainer or task) to its end, start-up and
    stop included."""
    start_seconds: float = 0.0
    """Start-up: from submitting the fit to the first line of the training loop."""
    stop_seconds: float = 0.0
    """Shut-down: from the end of the training loop to the fit returning."""
    worker_started: float = 0.0
    """Unix time at which rank 0 entered the training loop (this attempt)."""
    worker_finished: float = 0.0
    """Unix time at which rank 0 left it."""
    user_error: dict[str, str] | None = None
    """A user error that stopped the unit: {type, message}."""
    keep_checkpoints: bool = False
    """Whether the unit's checkpoints outlive it (a fit that diverged keeps its last good
    ones; the final report's checkpoint, with no fingerprint, is never resumed)."""


def checkpoint_root(store_uri: str) -> str:
    """RunConfig.storage_path: a folder under a local store, the URI for a remote one."""
    from library.store import SkillStore

    # uri_of keeps a remote store's query (endpoint, region): Ray resolves it with pyarrow.
    return SkillStore(store_uri).uri_of(CHECKPOINTS_FOLDER)


def _filesystem(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri_or_path:
        return pafs.FileSystem.from_uri(uri_or_path)
    return pafs.LocalFileSystem(), uri_or_path


def remove_run(store_uri: str, run_name: str) -> None:
    """Delete a finished unit's checkpoints (the store holds the results)."""
    fs, root = _filesystem(checkpoint_root(store_uri))
    path = f"{root}/{run_name}"
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def size_job(unit: FitUnit, stream: str, stream_seed: int, options: FitOptions,
             resources: dict[str, float]) -> FitJob:
    """Size a unit from the cluster's resources (never more than exist)."""
    requested = unit.task.train.workers
    sized: FitResources = plan_fit_resources(
        resources, concurrent_fits=options.concurrent_fits,
        workers=None if requested == "auto" else requested,
        cpus_per_worker=options.cpus_per_worker)
    return FitJob(stream=stream, stream_seed=stream_seed, unit=unit, workers=sized.workers,
                  cpus_per_worker=sized.cpus_per_worker, gpus_per_worker=sized.gpus_per_worker,
                  options=options)


# ------------------------------------------------------------------ the driver's side


def launch_fit(job: FitJob, store: StoreHandle, board, *upstream: Any) -> ray.ObjectRef:
    """Start fitting one unit once `upstream` (refs of the units and datasets it waits
    for) are done: a ref to its FitReport. Ray schedules the fit only then, which makes
    the DAG. A one-worker unit (`single_worker` "task") is one task holding the worker's
    CPUs and GPUs, retried from its latest checkpoint when its process dies; any other is
    a zero-CPU task driving a TorchTrainer."""
    if job.workers == 1 and job.options.single_worker == "task":
        return _unit_task.options(
            num_cpus=job.cpus_per_worker, num_gpus=job.gpus_per_worker,
            max_retries=job.options.max_failures, retry_exceptions=False,
        ).remote(job, store, board, *upstream)
    return fit_unit.remote(job, store, board, *upstream)


@ray.remote(num_cpus=0, max_retries=0)
def fit_unit(job: FitJob, store: StoreHandle, board, *upstream: Any) -> FitReport:
    """Run one unit's TorchTrainer (see `launch_fit`)."""
    return run_trainer(job, store, board)


def _finish(job: FitJob, store: StoreHandle, board, report: FitReport, started: float,
            started_unix: float) -> FitReport:
    """The driver's side of a unit's end: a user error raised as its own class, the
    checkpoints removed (the store is the record now), the timings filled in."""
    ended_unix = time.time()
    if not report.keep_checkpoints:
        remove_run(store.uri, job.run_name)
    if report.user_error is not None:
        raise _error_from_record(report.user_error)
    report.wall_seconds = time.perf_counter() - started
    report.start_seconds = max(0.0, report.worker_started - started_unix)
    report.stop_seconds = max(0.0, ended_unix - report.worker_finished)
    if board is not None:
        board.finish.remote(job.unit.name)
    return report


def run_trainer(job: FitJob, store: StoreHandle, board) -> FitReport:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started, started_unix = time.perf_counter(), time.time()
    resources = {"CPU": job.cpus_per_worker}
    if job.gpus_per_worker:
        resources["GPU"] = job.gpus_per_worker
    trainer = TorchTrainer(
        unit_loop,
        train_loop_config={"job": job.model_dump(mode="json"), "store": store, "board": board},
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=job.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=job.run_name,
            storage_path=checkpoint_root(store.uri),
            failure_config=FailureConfig(max_failures=job.options.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        result = trainer.fit()
    except Exception as error:  # TrainingFailedError wraps the worker's exception
        cause = psec_cause(error)
        if cause is not None:
            raise cause from None
        raise
    if result.error is not None:
        raise result.error
    return _finish(job, store, board, _read_report(result), started, started_unix)


def psec_cause(error: BaseException) -> PsecError | None:
    """The PsecError at the root of a Ray/Train failure chain, if any (a user error)."""
    seen = 0
    while error is not None and seen < 10:
        nested = getattr(error, "cause", None)
        # Ray re-raises a task's exception as a subclass of both RayTaskError and the
        # original class, whose str() is the whole remote traceback: prefer its cause.
        if isinstance(error, PsecError) and not isinstance(nested, BaseException):
            return error
        # ray.train.WorkerGroupError (public in Ray 2.60, Train v2) keeps each failed
        # worker's exception in `worker_failures`, by rank.
        failures = getattr(error, "worker_failures", None)
        if isinstance(nested, BaseException):
            error = nested
        elif isinstance(failures, dict) and failures:
            error = next(iter(failures.values()))
        else:
            error = error.__cause__ or error.__context__
        seen += 1
    return None


def _new_report(unit: str) -> dict[str, Any]:
    """A unit's FitReport (as plain data) before any stage ran."""
    return {"unit": unit, "registered": [], "skipped": [], "stage_seconds": {},
            "wall_seconds": 0.0}


def _error_record(error: PsecError) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


def _error_from_record(record: dict[str, str]) -> PsecError:
    """The PsecError a worker recorded, as its own class (library.errors)."""
    from library import errors

    kind = getattr(errors, record.get("type", ""), None)
    if not (isinstance(kind, type) and issubclass(kind, PsecError)):
        kind = PsecError
    message = record.get("message", "")
    if kind is errors.SpecError:  # its constructor takes (field, message)
        field, _, rest = message.partition(": ")
        return errors.SpecError(field, rest) if rest else PsecError(message)
    return kind(message)


def _read_report(result) -> FitReport:
    """The FitReport rank 0 wrote into the final checkpoint's metadata file."""
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError("the fit ended without a final checkpoint")
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, META_FILE)) as f:
            meta = json.load(f)
    return FitReport.model_validate(meta["report"])


# ------------------------------------------------------------------ the workers' side


def _allreduce_mean(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over workers: one flat all-reduce instead of one per tensor.

    Not `ray.train.torch.prepare_model` (DDP): DDP synchronises gradients for losses
    computed through the wrapped module's own `forward`, and a learner's loss is not one
    (`Learner.loss` runs the policy's ε-loss inside `use_skills`, weightings and frozen
    critics around it). `library.training.train` stays free of torch.distributed and Ray
    and takes this as its `grad_hook`; the average is DDP's (sum / world size).
    """
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        if p.grad is None:
            p.grad = flat[offset:offset + n].view_as(p).clone()
        else:
            p.grad.copy_(flat[offset:offset + n].view_as(p))
        offset += n


class _Resume(BaseModel):
    """What a checkpoint says about where the unit stood."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    stage_index: int
    """Index of the stage the checkpoint was taken in."""
    step: int
    """Steps of that stage completed."""
    learner_state: dict[str, Any]
    """`learner.state_dict()` at that step."""
    optimizer_state: dict[str, Any]
    """Adam's state at that step."""
    carry: dict[str, Any]
    """Critics fitted earlier in the unit (UnitContext.carry)."""
    report: dict[str, Any]
    """The FitReport so far (registered and skipped stages, stage seconds)."""


def _resume_from(meta: dict, state_bytes: bytes, fingerprint: str) -> _Resume | None:
    if meta.get("fingerprint") != fingerprint:
        return None  # another plan with the same run name: start afresh
    # weights_only: tensors and plain containers, never arbitrary pickled objects.
    state = torch.load(io.BytesIO(state_bytes), weights_only=True)
    return _Resume(stage_index=meta["stage_index"], step=meta["step"],
                   learner_state=state["learner"], optimizer_state=state["optimizer"],
                   carry=state["carry"], report=meta["report"])


class _TrainSession:
    """The unit loop inside a Ray Train worker group: checkpoints through Ray Train."""

    def __init__(self, job: FitJob):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = (ray.train.torch.get_device() if job.gpus_per_worker > 0
                       else torch.device("cpu"))

    def load_resume(self, fingerprint: str) -> _Resume | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, META_FILE)) as f:
                meta = json.load(f)
            with open(os.path.join(folder, STATE_FILE), "rb") as f:
                return _resume_from(meta, f.read(), fingerprint)

    def report(self, metrics: dict[str, float], meta: dict, state: dict,
               final: bool = False) -> None:
        """Every rank reports (it is a barrier); rank 0 attaches the checkpoint. The final
        one carries the FitReport to the driver (Result.checkpoint)."""
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="psec-ckpt-") as folder:
            torch.save(state, os.path.join(folder, STATE_FILE))
            with open(os.path.join(folder, META_FILE), "w") as f:
                json.dump(meta, f)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


class _TaskSession:
    """The unit loop in one plain Ray task (a one-worker unit): it writes its own
    checkpoints, `<run folder>/task-<stage>-<step>/` with meta.json written last (a
    checkpoint without it is incomplete and ignored), and keeps the newest two."""

    KEEP = 2

    def __init__(self, job: FitJob, store_uri: str):
        self.rank, self.world = 0, 1
        self.device = torch.device("cuda") if job.gpus_per_worker > 0 else torch.device("cpu")
        self.fs, root = _filesystem(checkpoint_root(store_uri))
        self.folder = f"{root}/{job.run_name}"
        self.final: dict | None = None

    def _complete(self) -> list[str]:
        """Paths of complete checkpoints, oldest first."""
        selector = pafs.FileSelector(self.folder, allow_not_found=True)
        names = sorted(info.base_name for info in self.fs.get_file_info(selector)
                       if info.type == pafs.FileType.Directory
                       and info.base_name.startswith("task-"))
        paths = [f"{self.folder}/{name}" for name in names]
        return [path for path in paths
                if self.fs.get_file_info(f"{path}/{META_FILE}").type == pafs.FileType.File]

    def load_resume(self, fingerprint: str) -> _Resume | None:
        complete = self._complete()
        if not complete:
            return None
        with self.fs.open_input_stream(f"{complete[-1]}/{META_FILE}") as f:
            meta = json.loads(f.read())
        with self.fs.open_input_stream(f"{complete[-1]}/{STATE_FILE}") as f:
            return _resume_from(meta, f.read(), fingerprint)

    def report(self, metrics: dict[str, float], meta: dict, state: dict,
               final: bool = False) -> None:
        if final:  # the task returns the report itself: nothing left to resume
            self.final = meta["report"]
            return
        # Names sort in training order: stage index, then step (zero-padded).
        path = f"{self.folder}/task-{meta['stage_index']:04d}-{meta['step']:012d}"
        self.fs.create_dir(path, recursive=True)
        buffer = io.BytesIO()
        torch.save(state, buffer)
        with self.fs.open_output_stream(f"{path}/{STATE_FILE}") as f:
            f.write(buffer.getvalue())
        with self.fs.open_output_stream(f"{path}/{META_FILE}") as f:
            f.write(json.dumps(meta).encode())
        for old in self._complete()[:-self.KEEP]:
            self.fs.delete_dir(old)


@ray.remote(max_retries=0)  # launch_fit sets its resources and retries
def _unit_task(job: FitJob, store: StoreHandle, board, *upstream: Any) -> FitReport:
    """A one-worker unit: the unit loop in this task, then the driver's side of its end."""
    started, started_unix = time.perf_counter(), time.time()
    session = _TaskSession(job, store.uri)
    _run_unit(job, store, board, session)
    assert session.final is not None  # _run_unit always ends with a final report
    report = FitReport.model_validate(session.final)
    return _finish(job, store, board, report, started, started_unix)


def _maybe_fail(options: FitOptions, stage: str, step: int, marker_root: str,
                run_name: str) -> None:
    """Fault tests: kill this worker process once, at the chosen stage and step."""
    point = options.fail_at
    if point is None or point.stage != stage or step < point.step:
        return
    fs, root = _filesystem(marker_root)
    marker = f"{root}/{run_name}-failed-once"
    if fs.get_file_info(marker).type != pafs.FileType.NotFound:
        return
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(marker) as f:
        f.write(f"{stage}:{step}".encode())
    os._exit(17)  # a hard crash, as if the node went away


def _lr_decay_steps(stage, task) -> int | None:
    """The cosine horizon of a policy stage (base, skill); None (constant) for the others,
    whose rates the official code keeps constant too."""
    if stage.kind not in ("base", "skill") or task.train.lr_decay == 0:
        return None
    return max(1, round(task.train.lr_decay * stage.steps))


def unit_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker of a unit's TorchTrainer."""
    job = FitJob.model_validate(config["job"])
    _run_unit(job, config["store"], config["board"], _TrainSession(job))


def _run_unit(job: FitJob, store: StoreHandle, board,
              session: _TrainSession | _TaskSession) -> None:
    """Every stage of the unit, resumable from the session's latest checkpoint."""
    from library.training import train
    from pipeline.stages import UnitContext
    from pipeline.tblog import RunLog, run_name

    worker_started = time.time()
    reporter = ProgressReporter(board, job.unit.name)
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(job.cpus_per_worker)

    fingerprint = job.fingerprint()
    resume = session.load_resume(fingerprint)
    try:
        unit_ctx = UnitContext(store, job.unit, device, rank=rank)
    except PsecError as error:
        # A user error found before any training (a missing base, dims, an empty composer
        # subset) fails the same way on every rank and on every retry: hand it to the
        # driver in a final report instead of letting Ray Train restart the workers.
        meta = {"fingerprint": fingerprint, "stage_index": 0, "step": 0,
                "report": {**_new_report(job.unit.name), "user_error": _error_record(error)}}
        session.report({"stage": -1, "step": 0}, meta,
                       {"learner": {}, "optimizer": {}, "carry": {}}, final=True)
        return
    report = dict(resume.report) if resume is not None else _new_report(job.unit.name)
    if resume is not None:
        unit_ctx.restore_carry(resume.carry)
    options = job.options
    marker_root = checkpoint_root(store.uri)

    for index, stage in enumerate(job.unit.stages):
        if resume is not None and index < resume.stage_index:
            continue  # finished in an earlier attempt (registered, or carried: critics)
        if unit_ctx.already_stored(stage):
            unit_ctx.skip(stage)
            if stage.name not in report["skipped"]:
                report["skipped"].append(stage.name)
            continue
        torch.manual_seed(stage.seed)  # identical initial weights on every worker
        learner = unit_ctx.build(stage)
        start, optimizer_state = 0, None
        if resume is not None and index == resume.stage_index:
            learner.load_state_dict(resume.learner_state)
            start, optimizer_state = resume.step, resume.optimizer_state
        learner.module.to(device)
        every = options.checkpoint_every or max(
            options.log_every, stage.steps // max(1, options.checkpoints_per_stage))
        log = RunLog(store.uri, run_name(stage.name, stage.method, job.stream_seed),
                     enabled=rank == 0)
        stage_started = time.perf_counter()

        def on_step(step: int, terms: dict[str, float], stage=stage, learner=learner,
                    log=log) -> None:
            if rank != 0:
                return  # rank 0 writes (and is the one a fault test kills)
            _maybe_fail(options, stage.name, step, marker_root, job.run_name)
            log.scalars(terms, step, prefix="train/")
            log.scalars(unit_ctx.alpha_stats(stage, learner), step, prefix="alpha/")
            reporter(stage.name, step, stage.steps)

        def on_checkpoint(checkpoint, index=index, stage=stage) -> None:
            meta = {"fingerprint": fingerprint, "stage_index": index, "step": checkpoint.step,
                    "report": report}
            state = {"learner": checkpoint.learner_state,
                     "optimizer": checkpoint.optimizer_state, "carry": unit_ctx.carry()}
            session.report({"stage": index, "step": checkpoint.step}, meta, state)

        terms: dict[str, float] = {}
        data = unit_ctx.data_for(stage)
        if stage.steps > 0:  # 0: an untrained composer, registered as initialised
            try:
                terms = train(
                    learner, data, stage.steps, max(1, stage.batch_size // world),
                    stage.lr, seed=stage.seed + 7919 * rank, on_step=on_step,
                    grad_hook=_allreduce_mean if world > 1 else None, start_step=start,
                    optimizer_state=optimizer_state,
                    log_every=min(options.log_every, stage.steps),
                    on_checkpoint=on_checkpoint, checkpoint_every=every,
                    lr_decay_steps=_lr_decay_steps(stage, job.unit.task)).terms
            except TrainingDiverged as error:
                # Every retry would diverge at the same step: end the unit with the error,
                # nothing registered, the checkpoints (all taken before it) kept.
                kept = f"{checkpoint_root(store.uri)}/{job.run_name}"
                report["user_error"] = _error_record(DataError(
                    f"{stage.name}: {error}; nothing registered, its checkpoints are kept "
                    f"in {kept}"))
                report["keep_checkpoints"] = True
                session.report({"stage": -1, "step": 0},
                               {"fingerprint": "", "stage_index": index, "step": 0,
                                "report": report},
                               {"learner": {}, "optimizer": {}, "carry": {}}, final=True)
                return
        seconds = time.perf_counter() - stage_started
        log.close()
        if stage.stored:
            metrics = {"train_steps": stage.steps, "train_seconds": round(seconds, 3),
                       "train_transitions": len(data.obs),
                       "resumed_from": start, "workers": world,
                       # Workers and threads are training inputs like the seed: a refit
                       # reproduces these weights bit for bit only with both the same.
                       "threads": job.cpus_per_worker,
                       **{f"train_{k}": v for k, v in terms.items() if "/" not in k}}
            if rank == 0:
                created = unit_ctx.register(stage, learner, metrics)
                if created:
                    report["registered"].append(stage.name)
        unit_ctx.finished(stage, learner)
        report["stage_seconds"][stage.name] = round(seconds, 3)
        resume = None

    report["worker_started"] = worker_started
    report["worker_finished"] = time.time()
    # The final report goes to the driver; every stage is in the store by now, so
    # resuming from it would do nothing.
    session.report({"stage": len(job.unit.stages), "step": 0},
                   {"fingerprint": fingerprint, "stage_index": len(job.unit.stages),
                    "step": 0, "report": report},
                   {"learner": {}, "optimizer": {}, "carry": {}}, final=True)

