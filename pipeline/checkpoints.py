"""A unit's checkpoints: where they live, what one holds, and the two sessions that write
and read them — `TrainSession` through Ray Train (a TorchTrainer's workers), `TaskSession`
by itself (a one-worker unit run as a plain Ray task, pipeline/fit.py).

Checkpoints live under `<store>/checkpoints/<stream>__<unit>/` (a folder for a local
store, the URI for a remote one) and are deleted when the unit is done: the store is then
the record. A checkpoint of a different plan (the spec changed) is ignored.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs
import ray
import torch
from pydantic import BaseModel, ConfigDict

from library.errors import StoreError
from library.store import error_reason
from pipeline.fit_job import FitReport

if TYPE_CHECKING:
    from pipeline.fit_job import FitJob

CHECKPOINTS_FOLDER = "checkpoints"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


def checkpoint_root(store_uri: str) -> str:
    """RunConfig.storage_path: a folder under a local store, the URI for a remote one."""
    from library.store import SkillStore

    # uri_of keeps a remote store's query (endpoint, region): Ray resolves it with pyarrow.
    return SkillStore(store_uri).uri_of(CHECKPOINTS_FOLDER)


def filesystem(uri_or_path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in uri_or_path:
        return pafs.FileSystem.from_uri(uri_or_path)
    return pafs.LocalFileSystem(), uri_or_path


def remove_run(store_uri: str, run_name: str) -> None:
    """Delete a finished unit's checkpoints (the store holds the results)."""
    fs, root = filesystem(checkpoint_root(store_uri))
    path = f"{root}/{run_name}"
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def read_report(result) -> FitReport:
    """The FitReport rank 0 wrote into the final checkpoint's metadata file."""
    checkpoint = result.checkpoint
    if checkpoint is None:
        raise RuntimeError("the fit ended without a final checkpoint")
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, META_FILE)) as f:
            meta = json.load(f)
    return FitReport.model_validate(meta["report"])


class Resume(BaseModel):
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


def resume_from(meta: dict, state_bytes: bytes, fingerprint: str) -> Resume | None:
    if meta.get("fingerprint") != fingerprint:
        return None  # another plan with the same run name: start afresh
    # weights_only: tensors and plain containers, never arbitrary pickled objects.
    state = torch.load(io.BytesIO(state_bytes), weights_only=True)
    return Resume(stage_index=meta["stage_index"], step=meta["step"],
                   learner_state=state["learner"], optimizer_state=state["optimizer"],
                   carry=state["carry"], report=meta["report"])


class TrainSession:
    """The unit loop inside a Ray Train worker group: checkpoints through Ray Train."""

    def __init__(self, job: FitJob):
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = (ray.train.torch.get_device() if job.gpus_per_worker > 0
                       else torch.device("cpu"))

    def load_resume(self, fingerprint: str) -> Resume | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            with open(os.path.join(folder, META_FILE)) as f:
                meta = json.load(f)
            with open(os.path.join(folder, STATE_FILE), "rb") as f:
                return resume_from(meta, f.read(), fingerprint)

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


class TaskSession:
    """The unit loop in one plain Ray task (a one-worker unit): it writes its own
    checkpoints, `<run folder>/task-<stage>-<step>/` with meta.json written last (a
    checkpoint without it is incomplete and ignored), and keeps the newest two."""

    KEEP = 2

    def __init__(self, job: FitJob, store_uri: str):
        self.rank, self.world = 0, 1
        self.device = torch.device("cuda") if job.gpus_per_worker > 0 else torch.device("cpu")
        self.store_uri = store_uri
        self.fs, root = filesystem(checkpoint_root(store_uri))
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

    def load_resume(self, fingerprint: str) -> Resume | None:
        try:
            complete = self._complete()
            if not complete:
                return None
            with self.fs.open_input_stream(f"{complete[-1]}/{META_FILE}") as f:
                meta = json.loads(f.read())
            with self.fs.open_input_stream(f"{complete[-1]}/{STATE_FILE}") as f:
                return resume_from(meta, f.read(), fingerprint)
        except OSError as error:
            raise self._failed("read", self.folder, error) from error

    def report(self, metrics: dict[str, float], meta: dict, state: dict,
               final: bool = False) -> None:
        if final:  # the task returns the report itself: nothing left to resume
            self.final = meta["report"]
            return
        # Names sort in training order: stage index, then step (zero-padded).
        path = f"{self.folder}/task-{meta['stage_index']:04d}-{meta['step']:012d}"
        buffer = io.BytesIO()
        torch.save(state, buffer)
        try:
            self.fs.create_dir(path, recursive=True)
            with self.fs.open_output_stream(f"{path}/{STATE_FILE}") as f:
                f.write(buffer.getvalue())
            with self.fs.open_output_stream(f"{path}/{META_FILE}") as f:
                f.write(json.dumps(meta).encode())
            for old in self._complete()[:-self.KEEP]:
                self.fs.delete_dir(old)
        except OSError as error:
            # One line naming the store; what was complete before stays the latest.
            raise self._failed("written", path, error) from error

    def _failed(self, done: str, path: str, error: OSError) -> StoreError:
        reason = " ".join(error_reason(error).split())
        return StoreError(f"store at {self.store_uri}: checkpoint {path} could not be "
                          f"{done}: {reason}")
