"""The loop a unit's workers run: every stage of the unit in order, through
`library.training.train`, resumable from the session's latest checkpoint
(pipeline/checkpoints.py). pipeline/fit.py starts it on Ray.

On each worker:

* torch threads = the worker's CPUs (Ray sets OMP_NUM_THREADS, torch does not follow it);
* with more than one worker, gradients are averaged with `torch.distributed.all_reduce`
  in `train`'s `grad_hook`, each worker drawing its own batches (its own seed) of
  batch_size / workers transitions;
* every `checkpoint_every` steps the session takes a checkpoint (stage index, step,
  learner and Adam state, critics fitted earlier in the unit, the report so far);
* rank 0 writes: TensorBoard scalars and the registration through the store actor.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import torch

from library.errors import DataError, PsecError, TrainingDiverged
from pipeline.checkpoints import Resume, TrainSession, checkpoint_root, filesystem
from pipeline.curves import CurveTracker
from pipeline.fit_job import FitJob, FitOptions, error_record, new_report
from pipeline.plan import STREAM_SEED
from pipeline.progress import ProgressReporter

if TYPE_CHECKING:
    from pipeline.checkpoints import TaskSession
    from pipeline.plan import Stage
    from pipeline.stages import UnitContext
    from pipeline.store_actor import StoreHandle

_NO_STATE = {"learner": {}, "optimizer": {}, "carry": {}}
"""The state of a final report: nothing to resume from it."""


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


def _maybe_fail(options: FitOptions, stage: str, step: int, marker_root: str,
                run_name: str) -> None:
    """Fault tests: kill this worker process once, at the chosen stage and step."""
    point = options.fail_at
    if point is None or point.stage != stage or step < point.step:
        return
    fs, root = filesystem(marker_root)
    marker = f"{root}/{run_name}-failed-once"
    if fs.get_file_info(marker).type != pafs.FileType.NotFound:
        return
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(marker) as f:
        f.write(f"{stage}:{step}".encode())
    os._exit(17)  # a hard crash, as if the node went away


def lr_decay_steps(stage, task) -> int | None:
    """The cosine horizon of a policy stage (base, skill); None (constant) for the others,
    whose rates the official code keeps constant too."""
    if stage.kind not in ("base", "skill") or task.train.lr_decay == 0:
        return None
    return max(1, round(task.train.lr_decay * stage.steps))


def unit_loop(config: dict[str, Any]) -> None:
    """train_loop_per_worker of a unit's TorchTrainer."""
    job = FitJob.model_validate(config["job"])
    run_unit(job, config["store"], config["board"], TrainSession(job))


def run_unit(job: FitJob, store: StoreHandle, board,
             session: TrainSession | TaskSession) -> None:
    """Every stage of the unit, resumable from the session's latest checkpoint; ends with
    the session's final report (the FitReport, a user error in it if one stopped the unit)."""
    from pipeline.stages import UnitContext

    worker_started = time.time()
    torch.set_num_threads(job.cpus_per_worker)
    fingerprint = job.fingerprint()
    resume = session.load_resume(fingerprint)
    try:
        unit_ctx = UnitContext(store, job.unit, session.device, rank=session.rank)
    except PsecError as error:
        # A user error found before any training (a missing base, dims, an empty composer
        # subset) fails the same way on every rank and on every retry: hand it to the
        # driver in a final report instead of letting Ray Train restart the workers.
        report = {**new_report(job.unit.name), "user_error": error_record(error)}
        _final_report(session, fingerprint, 0, report)
        return
    report = dict(resume.report) if resume is not None else new_report(job.unit.name)
    if resume is not None:
        unit_ctx.restore_carry(resume.carry)
    unit = _UnitRun(job, store, board, session, unit_ctx, fingerprint, report)
    for index, stage in enumerate(job.unit.stages):
        if resume is not None and index < resume.stage_index:
            continue  # finished in an earlier attempt (registered, or carried: critics)
        if unit_ctx.already_stored(stage):
            unit_ctx.skip(stage)
            if stage.name not in report["skipped"]:
                report["skipped"].append(stage.name)
            continue
        here = resume if resume is not None and index == resume.stage_index else None
        if not unit.fit_stage(index, stage, here):
            return  # diverged: its final report is sent
        resume = None
    report["worker_started"] = worker_started
    report["worker_finished"] = time.time()
    # The final report goes to the driver; every stage is in the store by now, so
    # resuming from it would do nothing.
    _final_report(session, fingerprint, len(job.unit.stages), report)


def _final_report(session: TrainSession | TaskSession, fingerprint: str, stage_index: int,
                  report: dict[str, Any]) -> None:
    session.report({"stage": -1 if report.get("user_error") else stage_index, "step": 0},
                   {"fingerprint": fingerprint, "stage_index": stage_index, "step": 0,
                    "report": report}, _NO_STATE, final=True)


class _UnitRun:
    """One attempt at a unit's stages on one worker: what every stage's fit shares."""

    def __init__(self, job: FitJob, store: StoreHandle, board,
                 session: TrainSession | TaskSession, unit_ctx: UnitContext,
                 fingerprint: str, report: dict[str, Any]):
        self.job, self.store, self.session, self.unit_ctx = job, store, session, unit_ctx
        self.fingerprint, self.report = fingerprint, report
        self.reporter = ProgressReporter(board, job.unit.name)
        self.marker_root = checkpoint_root(store.uri)

    def fit_stage(self, index: int, stage: Stage, resume: Resume | None) -> bool:
        """Train `stage` (from `resume` if it is this stage's checkpoint), register it and
        hand it on; False when its training diverged (the unit's final report is sent)."""
        from pipeline.tblog import RunLog, run_name

        torch.manual_seed(stage.seed)  # identical initial weights on every worker
        learner = self.unit_ctx.build(stage)
        start, optimizer_state = 0, None
        if resume is not None:
            learner.load_state_dict(resume.learner_state)
            start, optimizer_state = resume.step, resume.optimizer_state
            self.report.setdefault("resumed", {})[stage.name] = start
        learner.module.to(self.session.device)
        log = RunLog(self.store.uri, run_name(stage.name, stage.method, self.job.stream_seed),
                     enabled=self.session.rank == 0)
        stage_started = time.perf_counter()
        # Kept on the fit's device: on a GPU no batch is copied from the host per step.
        data = self.unit_ctx.data_for(stage).to(self.session.device)
        terms: dict[str, float] = {}
        curve = self._curve(stage, start)
        if stage.steps > 0:  # 0: an untrained composer, registered as initialised
            try:
                terms = self._train(index, stage, learner, data, log, start, optimizer_state,
                                    curve)
            except TrainingDiverged as error:
                self._diverged(index, stage, error)
                return False
        seconds = time.perf_counter() - stage_started
        log.close()
        if stage.stored:
            extra = {}
            if curve is not None:
                curve.collect(wait=True)
                curve.close()
                extra["curve"] = curve.metrics()
            self._register(stage, learner, terms, seconds, len(data.obs), start, extra)
        self.unit_ctx.finished(stage, learner)
        self.report["stage_seconds"][stage.name] = round(seconds, 3)
        return True

    def _curve(self, stage: Stage, start: int) -> CurveTracker | None:
        """The learning curve of a base or skill stage whose task asks for one (rank 0)."""
        if (stage.kind not in ("base", "skill") or not stage.stored or stage.steps == 0
                or self.job.unit.task.eval.curve_points == 0 or self.session.rank != 0):
            return None
        return CurveTracker(self.store, self.job.unit.task, stage.name, stage.steps, start,
                            self.report)

    def _train(self, index: int, stage: Stage, learner, data, log, start: int,
               optimizer_state: dict | None, curve: CurveTracker | None) -> dict[str, float]:
        from library.training import train

        job, options, rank, world = self.job, self.job.options, self.session.rank, self.session.world

        def measure(done: int) -> None:
            if curve.due(done):
                curve.launch(done, self.unit_ctx.snapshot(stage, learner))

        if curve is not None:
            measure(start)  # step 0 (or the step this attempt resumes from)

        def on_step(step: int, terms: dict[str, float]) -> None:
            if rank != 0:
                return  # rank 0 writes (and is the one a fault test kills)
            if curve is not None:
                curve.collect(wait=False)
            _maybe_fail(options, stage.name, step, self.marker_root, job.run_name)
            log.scalars(terms, step, prefix="train/")
            log.scalars(self.unit_ctx.alpha_stats(stage, learner), step, prefix="alpha/")
            self.reporter(stage.name, step, stage.steps)

        def on_checkpoint(checkpoint) -> None:
            if curve is not None:
                curve.collect(wait=False)  # finished points go into this checkpoint's report
            meta = {"fingerprint": self.fingerprint, "stage_index": index,
                    "step": checkpoint.step, "report": self.report}
            state = {"learner": checkpoint.learner_state,
                     "optimizer": checkpoint.optimizer_state, "carry": self.unit_ctx.carry()}
            self.session.report({"stage": index, "step": checkpoint.step}, meta, state)

        every = options.checkpoint_every or max(
            options.log_every, stage.steps // max(1, options.checkpoints_per_stage))
        return train(
            learner, data, stage.steps, max(1, stage.batch_size // world), stage.lr,
            seed=stage.seed + 7919 * rank, on_step=on_step,
            grad_hook=_allreduce_mean if world > 1 else None, start_step=start,
            optimizer_state=optimizer_state, log_every=min(options.log_every, stage.steps),
            on_checkpoint=on_checkpoint, checkpoint_every=every,
            lr_decay_steps=lr_decay_steps(stage, job.unit.task),
            after_step=measure if curve is not None else None).terms

    def _diverged(self, index: int, stage: Stage, error: TrainingDiverged) -> None:
        """Every retry would diverge at the same step: end the unit with the error, nothing
        registered, the checkpoints (all taken before it) kept."""
        kept = f"{checkpoint_root(self.store.uri)}/{self.job.run_name}"
        self.report["user_error"] = error_record(DataError(
            f"{stage.name}: {error}; nothing registered, its checkpoints are kept in {kept}"))
        self.report["keep_checkpoints"] = True
        # No fingerprint: the final report's checkpoint is never resumed.
        _final_report(self.session, "", index, self.report)

    def _register(self, stage: Stage, learner, terms: dict[str, float], seconds: float,
                  transitions: int, resumed_from: int, extra: dict[str, Any]) -> None:
        metrics = {"train_steps": stage.steps, "train_seconds": round(seconds, 3),
                   "train_transitions": transitions, "resumed_from": resumed_from,
                   "workers": self.session.world,
                   # Workers and threads are training inputs like the seed: a refit
                   # reproduces these weights bit for bit only with both the same.
                   "threads": self.job.cpus_per_worker, STREAM_SEED: self.job.stream_seed,
                   **{f"train_{k}": v for k, v in terms.items() if "/" not in k}, **extra}
        if self.session.rank == 0 and self.unit_ctx.register(stage, learner, metrics):
            self.report["registered"].append(stage.name)
