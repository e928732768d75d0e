"""A store on a disk that fills up: a real 1 MiB tmpfs (skipped where this process may not
mount one). The write that does not fit fails with one line naming the store and the
reason, leaves no partial item and no temp file, and what was stored before still loads."""

import os
import subprocess
import uuid

import pyarrow as pa
import pytest
import torch

from library.errors import StoreError
from library.store import SkillStore


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"psec-{uuid.uuid4().hex[:6]}",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def tensors(kib: int) -> dict[str, torch.Tensor]:
    return {"w": torch.ones(kib * 256)}  # kib KiB of float32


def files_under(folder) -> list[str]:
    """Every file of the store but its per-name lock files (kept by design, empty)."""
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names
                  if ".locks" not in root)


def test_a_full_disk_is_one_line_and_keeps_what_was_stored(small_disk):
    store = SkillStore(str(small_disk / "store"))
    store.register("b0", "base", {"kind": "base"}, tensors(600))
    before = files_under(small_disk)
    with pytest.raises(StoreError, match=r"^store at .* is not writable: .*No space left") as info:
        store.register("b1", "base", {"kind": "base"}, tensors(600))
    assert "\n" not in str(info.value)
    assert files_under(small_disk) == before  # no half item, no temp file
    assert [entry.name for entry in store.list()] == ["b0"]
    assert torch.equal(store.load("b0")[1]["w"], tensors(600)["w"])
    big = pa.table({"x": pa.array(range(200_000), pa.int64())})
    with pytest.raises(StoreError, match="No space left"):
        store.put_dataset("d", big)
    assert not store.has_dataset("d") and files_under(small_disk) == before
    store.remove("b0")  # room again: the same registration goes through
    store.register("b1", "base", {"kind": "base"}, tensors(600))
    assert [entry.name for entry in store.list()] == ["b1"]
