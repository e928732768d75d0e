"""The skill store as a named Ray actor, so that every writer goes through one process.

Fits, evaluations and drivers run in many Ray workers at once. `library.store.SkillStore`
is safe for concurrent writers on a local disk (per-name file locks), but an object store
(s3://...) has no locks and no exclusive create. One actor per store URI serialises every
write; reads run concurrently on the actor's other threads.

The actor is named after the store URI and created get-or-create in the `psec`
namespace, detached, so a `psec serve` driver, a `psec run` driver and `psec submit`
calls on one cluster all share it and it outlives any one of them. It holds no state of
its own (every call goes to the files), so a leftover actor is harmless.

`StoreHandle` wraps the actor handle with blocking methods named like SkillStore's, and
turns a `PsecError` raised inside the actor back into the same one-line error.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import ray
import torch

from library.errors import PsecError
from library.store import ManifestEntry, SkillStore
from pipeline.runtime import NAMESPACE, store_actor_name


# It holds no state, so when its node is lost Ray may start it again elsewhere and retry
# the calls that were in flight (a registration that had landed is found by
# `register_once`): every driver and fit keeps the handle it has.
@ray.remote(num_cpus=0, max_concurrency=16, max_restarts=-1, max_task_retries=-1)
class StoreActor:
    """Owns one SkillStore; writes hold a lock, reads do not."""

    def __init__(self, uri: str):
        self._store = SkillStore(uri)
        self._write_lock = threading.Lock()

    def uri(self) -> str:
        return self._store.uri

    def local_path(self) -> str | None:
        return self._store.local_path

    # Writes: serialised.
    def register(self, name: str, kind: str, config: dict, tensors: dict, **kwargs: Any):
        with self._write_lock:
            return self._store.register(name, kind, config, tensors, **kwargs)

    def register_once(self, name: str, kind: str, config: dict, tensors: dict, **kwargs: Any):
        """Register unless `name` exists (a fit resumed after its registration); returns
        (entry, created)."""
        with self._write_lock:
            if self._store.exists(name):
                return self._store.entry(name), False
            return self._store.register(name, kind, config, tensors, **kwargs), True

    def update_metrics(self, name: str, metrics: dict) -> ManifestEntry:
        with self._write_lock:
            return self._store.update_metrics(name, metrics)

    def remove(self, name: str) -> None:
        with self._write_lock:
            self._store.remove(name)

    def put_dataset(self, name: str, table: pa.Table, overwrite: bool = False) -> None:
        with self._write_lock:
            self._store.put_dataset(name, table, overwrite=overwrite)

    def append_results(self, rows: list[dict]) -> None:
        with self._write_lock:
            self._store.append_results(rows)

    def check_writable(self) -> None:
        with self._write_lock:
            self._store.check_writable()

    # Reads: concurrent.
    def load(self, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
        return self._store.load(name)

    def entry(self, name: str) -> ManifestEntry:
        return self._store.entry(name)

    def exists(self, name: str) -> bool:
        return self._store.exists(name)

    def list(self, kind: str | None = None) -> list[ManifestEntry]:
        return self._store.list(kind)

    def get_dataset(self, name: str) -> pa.Table:
        return self._store.get_dataset(name)

    def has_dataset(self, name: str) -> bool:
        return self._store.has_dataset(name)

    def results(self) -> pa.Table:
        return self._store.results()


def actor_name(uri: str) -> str:
    """The actor's name: one per store (by its absolute URI, which may be long)."""
    return store_actor_name("store", uri)


def store_actor(uri: str) -> ray.actor.ActorHandle:
    """Get or create the store actor of `uri` (needs a connected Ray)."""
    # SkillStore resolves a relative local path against THIS process's folder, which
    # is the one the user meant; the actor may start in another folder.
    absolute = SkillStore(uri).uri
    return StoreActor.options(
        name=actor_name(absolute),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
    ).remote(absolute)


def _unwrap(ref: ray.ObjectRef) -> Any:
    """`ray.get`, re-raising a PsecError from inside the actor as itself (one line)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, PsecError):
            raise error.cause from None
        raise


class StoreHandle:
    """Blocking, SkillStore-like access through the store actor; picklable into workers."""

    def __init__(self, uri: str, actor: ray.actor.ActorHandle | None = None):
        self.uri = SkillStore(uri).uri
        self.actor = actor if actor is not None else store_actor(self.uri)

    def __reduce__(self):
        return (StoreHandle, (self.uri, self.actor))

    @property
    def local_path(self) -> str | None:
        return SkillStore(self.uri).local_path

    def register(self, name: str, kind: str, config: Mapping, tensors: Mapping,
                 **kwargs: Any) -> ManifestEntry:
        return _unwrap(self.actor.register.remote(name, kind, dict(config), dict(tensors),
                                                  **kwargs))

    def register_once(self, name: str, kind: str, config: Mapping, tensors: Mapping,
                      **kwargs: Any) -> tuple[ManifestEntry, bool]:
        return _unwrap(self.actor.register_once.remote(name, kind, dict(config), dict(tensors),
                                                       **kwargs))

    def update_metrics(self, name: str, metrics: Mapping) -> ManifestEntry:
        return _unwrap(self.actor.update_metrics.remote(name, dict(metrics)))

    def remove(self, name: str) -> None:
        _unwrap(self.actor.remove.remote(name))

    def put_dataset(self, name: str, table: pa.Table, overwrite: bool = False) -> None:
        _unwrap(self.actor.put_dataset.remote(name, table, overwrite))

    def append_results(self, rows: list[dict]) -> None:
        _unwrap(self.actor.append_results.remote(rows))

    def check_writable(self) -> None:
        _unwrap(self.actor.check_writable.remote())

    def load(self, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
        return _unwrap(self.actor.load.remote(name))

    def entry(self, name: str) -> ManifestEntry:
        return _unwrap(self.actor.entry.remote(name))

    def exists(self, name: str) -> bool:
        return _unwrap(self.actor.exists.remote(name))

    def list(self, kind: str | None = None) -> list[ManifestEntry]:
        return _unwrap(self.actor.list.remote(kind))

    def get_dataset(self, name: str) -> pa.Table:
        return _unwrap(self.actor.get_dataset.remote(name))

    def has_dataset(self, name: str) -> bool:
        return _unwrap(self.actor.has_dataset.remote(name))

    def results(self) -> pa.Table:
        return _unwrap(self.actor.results.remote())
