"""Fit units on Ray, the driver's side: one TorchTrainer per unit of several workers, sized
from the cluster, or one plain Ray task for a unit of one worker.

`launch_fit` starts a Ray task per unit, so several units run at once: `fit_unit` builds a
`TorchTrainer` whose workers run `unit_loop` (pipeline/unit_loop.py): every stage of the
unit in order, through `library.training.train`. A unit sized to ONE worker runs the same
loop in one plain Ray task instead (`FitOptions.single_worker`, default "task"): a
TorchTrainer around a single worker averages no gradients, yet costs ~10 s of start-up and
shut-down and six helper actors that take CPU from the fits beside it
(docs/BENCHMARKS.md). The task reserves the worker's CPUs (and GPUs), writes the same
checkpoints itself under the same folder (pipeline/checkpoints.py), and Ray retries it
`max_failures` times when its process dies, resuming from the latest one. A TorchTrainer's
`FailureConfig(max_failures)` restarts a failed worker group from its latest checkpoint,
and Ray Train restores a run by its name, so a driver that was killed resumes a half-done
unit too. When a unit ends, its checkpoints are deleted: the store is then the record.
"""

from __future__ import annotations

import time
from typing import Any

import ray

from library.errors import PsecError
from pipeline.checkpoints import TaskSession, checkpoint_root, read_report, remove_run
from pipeline.fit_job import FitJob, FitOptions, FitReport, error_from_record
from pipeline.plan import FitUnit
from pipeline.runtime import FitResources, plan_fit_resources
from pipeline.store_actor import StoreHandle
from pipeline.unit_loop import run_unit, unit_loop


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
        raise error_from_record(report.user_error)
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
    return _finish(job, store, board, read_report(result), started, started_unix)


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


@ray.remote(max_retries=0)  # launch_fit sets its resources and retries
def _unit_task(job: FitJob, store: StoreHandle, board, *upstream: Any) -> FitReport:
    """A one-worker unit: the unit loop in this task, then the driver's side of its end."""
    started, started_unix = time.perf_counter(), time.time()
    session = TaskSession(job, store.uri)
    run_unit(job, store, board, session)
    assert session.final is not None  # run_unit always ends with a final report
    report = FitReport.model_validate(session.final)
    return _finish(job, store, board, report, started, started_unix)
