"""TensorBoard event files per fit, under the store: `runs/<item>__<method>__<seed>/`.

`tensorboard --logdir <store>/runs` then shows every fit of every stream side by side.
For a local store the writer writes there directly; for a remote store (s3://...) it
writes to a temporary folder and copies the files up on `close` (TensorBoard's writer
cannot open a pyarrow URI), so a remote run shows up when its stage or evaluation ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping

import pyarrow.fs as pafs

from library.errors import StoreError
from library.store import SkillStore

RUNS_FOLDER = "runs"


def run_name(item: str, method: str, seed: int) -> str:
    """CleanRL's `{task}__{method}__{seed}`, with the stored item's name as the task part
    (two composers of one task differ by name, not by method)."""
    return f"{item}__{method}__{seed}"


class RunLog:
    """Scalars of one run; a no-op on ranks other than 0 (`enabled=False`)."""

    def __init__(self, store_uri: str, run: str, enabled: bool = True):
        self._writer = None
        self._upload_to: str | None = None
        self._tmp: str | None = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # 0.3 s; only where used

        store = SkillStore(store_uri)
        if store.local_path is not None:
            folder = store.uri_of(RUNS_FOLDER, run)
        else:
            self._tmp = tempfile.mkdtemp(prefix="psec-tb-")
            folder = self._tmp
            # uri_of keeps the store URI's query (endpoint, region) where pyarrow reads it.
            self._upload_to = store.uri_of(RUNS_FOLDER, run)
        self._writer = SummaryWriter(log_dir=folder)

    def scalars(self, values: Mapping[str, float], step: int, prefix: str = "") -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}{key}", float(value), step)

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        if self._upload_to is not None and self._tmp is not None:
            try:
                fs, path = pafs.FileSystem.from_uri(self._upload_to)
                fs.create_dir(path, recursive=True)
                pafs.copy_files(self._tmp, path, destination_filesystem=fs)
            except OSError as e:
                raise StoreError(f"TensorBoard run {self._upload_to} not uploaded "
                                 f"(its events stay in {self._tmp}): {e}") from e
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _local_runs(store_uri: str) -> str:
    store = SkillStore(store_uri)
    if store.local_path is None:
        raise StoreError(f"{store_uri}: TensorBoard runs are read from a local store only")
    return store.uri_of(RUNS_FOLDER)


def item_runs(store_uri: str, item: str) -> list[str]:
    """The runs of a local store logged for `item` (`run_name(item, *, *)`), sorted."""
    folder = _local_runs(store_uri)
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(name for name in names
                  if name.startswith(f"{item}__") and name.count("__") == 2)


def last_scalars(store_uri: str, run: str, prefix: str = "") -> dict[str, float]:
    """The last logged value of each scalar of a local store's run whose tag starts with
    `prefix` (the prefix cut off); {} when the run logged none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(_local_runs(store_uri), run),
                              size_guidance={"scalars": 0})
    events.Reload()
    return {tag[len(prefix):]: events.Scalars(tag)[-1].value
            for tag in events.Tags()["scalars"] if tag.startswith(prefix)}
