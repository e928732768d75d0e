"""What a fit is, as plain data: the driver's options, the job a unit's workers receive and
the report they hand back (pipeline/fit.py runs it, pipeline/unit_loop.py is the loop)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from library.errors import PsecError
from pipeline.plan import FitUnit


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
        """Identifies the plan of the unit; checkpoints of another plan are not resumed.

        Fields at their defaults are left out, as `pipeline.checks.same_fit` reads a
        stored spec: a psec that adds a field (at a default that keeps what fits did)
        still resumes the checkpoints an earlier one wrote.
        """
        data = self.unit.model_dump(mode="json", exclude_defaults=True)
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
    resumed: dict[str, int] = {}
    """Stages this attempt took up from a checkpoint (an earlier attempt's worker, process
    or node was lost), by the step it resumed from."""
    keep_checkpoints: bool = False
    """Whether the unit's checkpoints outlive it (a fit that diverged keeps its last good
    ones; the final report's checkpoint, with no fingerprint, is never resumed)."""


def new_report(unit: str) -> dict[str, Any]:
    """A unit's FitReport (as plain data) before any stage ran."""
    return {"unit": unit, "registered": [], "skipped": [], "stage_seconds": {},
            "wall_seconds": 0.0}


def error_record(error: PsecError) -> dict[str, str]:
    return {"type": type(error).__name__, "message": str(error)}


def error_from_record(record: dict[str, str]) -> PsecError:
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
