"""The skill store: bases, skills and composers, their datasets and their results.

A store is a folder on any pyarrow filesystem (a local path, `file://…`, `s3://bucket/prefix`):

    items/<name>/adapter_config.json          the item's config (peft's file name)
    items/<name>/adapter_model.safetensors    its tensors (peft's file name, keys without the name)
    manifest/<name>.json                      one ManifestEntry per item, written LAST
    datasets/<name>.parquet                   canonical datasets (schema metadata kept)
    results/<time>-<uuid>.parquet             one file per `append_results` call
    .locks/<name>.lock                        local stores only: per-name advisory locks

The manifest entry (library/manifest.py) is the commit point. An item exists iff its entry
exists, so files left by a crash between the weights and the entry are invisible, and the
next registration of that name writes over them. Every entry is its own file, so processes registering different
names never touch a shared file.

Concurrency on the SAME name. On a local filesystem every write to a name happens under an
exclusive `flock` on `.locks/<name>.lock` (released by the kernel if the process dies, so a
crash leaves no stale lock), and a new entry is created with `os.link`, which fails if the
entry exists: of several processes registering one name exactly one wins and the others get
"already exists". Reads take the shared lock, so `load` never sees the weights of one
registration with the entry of another. Object stores have no exclusive create and no
locks (a single PUT is atomic per object, nothing more): there the pipeline's store actor
serialises registrations, and this class must not be used to write one name from two
processes at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import safetensors.torch
import torch

from library.errors import DataError, StoreError
from library.manifest import (
    KINDS,
    ManifestEntry,
    entry_bytes,
    json_ready,
    parse_entry,
    safetensors_bytes,
    summarise,
)
from library.names import check_name

DEFAULT_URI = "./psec-store"
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# pyarrow's GCS client retries a failing request (an endpoint that does not answer, or a
# credentials lookup with no network) for minutes; its S3 client gives up after 3 attempts.
# A store that cannot be reached should say so within seconds on GCS too, so a gs:// URI that
# sets no `retry_limit_seconds` of its own gets this one (tests/test_store_gcs.py times the
# one-line error). It goes into the store's URI, so every tool that opens store paths itself
# (`uri_of`) retries alike; a URI may set a longer limit.
GCS_RETRY_LIMIT_S = 3
# How many names an "unknown name" error lists before "and N more".
_HINT_NAMES = 5



class SkillStore:
    """Stores items peft-style on a pyarrow filesystem, with a manifest as the commit point."""

    def __init__(self, uri: str = DEFAULT_URI):
        if not isinstance(uri, str) or not uri:
            raise StoreError(f"store URI must be a non-empty string, got {uri!r}")
        if "://" in uri:
            uri = _with_gcs_retry_limit(uri)
            try:
                fs, root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, OSError) as e:
                raise StoreError(f"cannot open store at {uri}: {e}") from e
            self._uri = uri
        else:
            # from_uri refuses relative paths; and a Ray worker may run in another folder,
            # so the store remembers the absolute path and hands that out as its URI.
            fs, root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
            self._uri = root
        self._fs: pafs.FileSystem = fs
        self._root = root.rstrip("/") or root
        self._local = isinstance(fs, pafs.LocalFileSystem)

    def __reduce__(self):
        # A pickled store is its URI: the filesystem is rebuilt where it is unpickled
        # (a Ray worker), with that machine's credentials.
        return (SkillStore, (self._uri,))

    def __repr__(self) -> str:
        return f"SkillStore({self._uri!r})"

    @property
    def uri(self) -> str:
        """A URI that names this store from any process (absolute for local folders)."""
        return self._uri

    @property
    def local_path(self) -> str | None:
        """The store's folder on this machine, or None for a remote store."""
        return self._root if self._local else None

    def uri_of(self, *parts: str) -> str:
        """The path or URI of `<store>/<parts>` for tools that open it themselves (Ray Train
        checkpoints, TensorBoard runs, Tune records): a remote store's query
        (`?endpoint_override=…&region=…`) stays at the end, where pyarrow reads it."""
        if self._local:
            return os.path.join(self._root, *parts)
        base, sep, query = self._uri.partition("?")
        return f"{base.rstrip('/')}/{'/'.join(parts)}{sep}{query}"

    # ------------------------------------------------------------------ items

    def register(
        self,
        name: str,
        kind: str,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        *,
        parent: str | None = None,
        task_spec: Mapping[str, Any] | None = None,
        dataset_fingerprint: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> ManifestEntry:
        """Store an item and commit its manifest entry; validates everything before writing."""
        check_name(name)
        self._check_parent(name, kind, parent)
        if not isinstance(config, Mapping):
            raise StoreError(f"config of {name!r} must be a dict, got {type(config).__name__}")
        config_json = json_ready(dict(config), "config")
        weights = safetensors_bytes(name, tensors)
        if dataset_fingerprint is not None and not isinstance(dataset_fingerprint, str):
            raise StoreError(f"dataset_fingerprint of {name!r} must be a string")
        entry = ManifestEntry(
            name=name,
            kind=kind,
            parent=parent,
            task_spec=None if task_spec is None else json_ready(dict(task_spec), "task_spec"),
            dataset_fingerprint=dataset_fingerprint,
            sha256=hashlib.sha256(weights).hexdigest(),
            size_bytes=len(weights),
            metrics={} if metrics is None else json_ready(dict(metrics), "metrics"),
            created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
            config_summary=summarise(config_json),
        )
        config_bytes = json.dumps(config_json, indent=2, sort_keys=True, allow_nan=False).encode()

        with self._lock(name):
            if not overwrite and self.exists(name):
                raise StoreError(f"{name!r} is already in the store (pass overwrite to replace it)")
            item = self._path("items", name)
            self._write(f"{item}/{WEIGHTS_FILE}", weights)
            self._write(f"{item}/{CONFIG_FILE}", config_bytes)
            # The entry last: until it lands, the files above belong to no item.
            try:
                self._write(self._entry_path(name), entry_bytes(entry), exclusive=not overwrite)
            except _Exists:
                raise StoreError(
                    f"{name!r} was registered by another process at the same time"
                ) from None
        return entry

    def _check_parent(self, name: str, kind: str, parent: str | None) -> None:
        """A base has no parent; any other kind has a stored base as its parent."""
        if kind not in KINDS:
            raise StoreError(f"kind of {name!r} must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind == "base":
            if parent is not None:
                raise StoreError(f"base {name!r} cannot have a parent (got {parent!r})")
            return
        if parent is None:
            raise StoreError(f"{kind} {name!r} needs a parent base")
        check_name(parent)
        if not self.exists(parent):
            raise StoreError(
                f"parent base {parent!r} of {kind} {name!r} is not in the store"
                f"{self._names_hint()}"
            )
        if (parent_kind := self.entry(parent).kind) != "base":
            raise StoreError(
                f"parent {parent!r} of {kind} {name!r} is a {parent_kind}, not a base"
            )

    def load(self, name: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Return `(config, tensors)` of an item, after checking the weights' sha256."""
        with self._lock(name, shared=True):
            entry = self.entry(name)
            item = self._path("items", name)
            weights = self._read(f"{item}/{WEIGHTS_FILE}")
            config_bytes = self._read(f"{item}/{CONFIG_FILE}")
        if weights is None or config_bytes is None:
            missing = WEIGHTS_FILE if weights is None else CONFIG_FILE
            raise StoreError(
                f"{entry.kind} {name!r} is missing its {missing}: the store was modified by hand"
            )
        if hashlib.sha256(weights).hexdigest() != entry.sha256:
            raise StoreError(
                f"checksum mismatch for {entry.kind} {name!r}: stored file was modified or corrupted"
            )
        try:
            config = json.loads(config_bytes)
        except ValueError as e:
            raise StoreError(f"{CONFIG_FILE} of {name!r} is not valid JSON: {e}") from e
        return config, safetensors.torch.load(weights)

    def entry(self, name: str) -> ManifestEntry:
        """The manifest entry of `name`; StoreError naming what exists if there is none."""
        check_name(name)
        data = self._read(self._entry_path(name))
        if data is None:
            raise StoreError(f"no item named {name!r} in the store{self._names_hint()}")
        return parse_entry(data, self._entry_path(name))

    def exists(self, name: str) -> bool:
        """Whether `name` is committed (has a manifest entry)."""
        check_name(name)
        return self._info(self._entry_path(name)).type == pafs.FileType.File

    def list(self, kind: str | None = None) -> list[ManifestEntry]:
        """Every committed entry, oldest first; only those of `kind` if given."""
        if kind is not None and kind not in KINDS:
            raise StoreError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        entries = []
        for path in self._files("manifest", ".json"):
            data = self._read(path)
            if data is not None:  # removed between the listing and the read
                entries.append(parse_entry(data, path))
        entries.sort(key=lambda e: (e.created, e.name))
        return [e for e in entries if kind is None or e.kind == kind]

    def manifest(self) -> list[dict[str, Any]]:
        """The whole manifest as JSON-ready dicts, oldest first (`psec skills list --json`)."""
        return [e.model_dump(mode="json") for e in self.list()]

    def update_metrics(self, name: str, metrics: Mapping[str, Any]) -> ManifestEntry:
        """Merge `metrics` into the entry's metrics (new keys win) and rewrite the entry."""
        if not isinstance(metrics, Mapping):
            raise StoreError(f"metrics for {name!r} must be a dict, got {type(metrics).__name__}")
        new = json_ready(dict(metrics), "metrics")
        self.entry(name)  # an unknown name fails here, before a lock file is made for it
        with self._lock(name):
            entry = self.entry(name)
            entry = entry.model_copy(update={"metrics": {**entry.metrics, **new}})
            self._write(self._entry_path(name), entry_bytes(entry))
        return entry

    def remove(self, name: str) -> None:
        """Delete an item: its entry first (so it vanishes at once), then its files."""
        self.entry(name)  # an unknown name fails here, before a lock file is made for it
        with self._lock(name):
            entry = self.entry(name)
            children = [e.name for e in self.list() if e.parent == name]
            if children:
                raise StoreError(
                    f"cannot remove {entry.kind} {name!r}: items built on it remain "
                    f"({', '.join(children)}); remove them first"
                )
            self._guard(lambda: self._fs.delete_file(self._entry_path(name)))
            item = self._path("items", name)
            if self._info(item).type == pafs.FileType.Directory:
                self._guard(lambda: self._fs.delete_dir(item))

    # --------------------------------------------------------------- datasets

    def put_dataset(self, name: str, table: pa.Table, *, overwrite: bool = False) -> None:
        """Store a dataset as `datasets/<name>.parquet`, schema metadata included."""
        check_name(name)
        if not isinstance(table, pa.Table):
            raise StoreError(
                f"dataset {name!r} must be a pyarrow.Table, got {type(table).__name__}"
            )
        if not overwrite and self.has_dataset(name):
            raise StoreError(
                f"dataset {name!r} is already in the store (pass overwrite to replace it)"
            )
        self._write_parquet(self._path("datasets", f"{name}.parquet"), table)

    def get_dataset(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        """The dataset stored under `name` (only `columns`, if given, with the schema's
        metadata); StoreError naming what exists if there is none."""
        return self._read_dataset(
            name, lambda path, filesystem: pq.read_table(path, filesystem=filesystem,
                                                         columns=columns))

    def get_dataset_schema(self, name: str) -> pa.Schema:
        """The schema (with its metadata) of dataset `name`, read from the Parquet footer
        alone: what a check of a stored dataset's provenance needs, without its rows."""
        return self._read_dataset(name, pq.read_schema)

    def dataset_names(self) -> list[str]:
        """Names of the stored datasets, sorted."""
        return [os.path.basename(p)[: -len(".parquet")] for p in self._files("datasets", ".parquet")]

    def dataset_footer(self, name: str) -> tuple[pa.Schema, int]:
        """The schema (with its metadata) and the transitions of dataset `name`, from one
        read of its Parquet footer."""
        footer = self._read_dataset(name, pq.read_metadata)
        return footer.schema.to_arrow_schema(), footer.num_rows

    def _read_dataset(self, name: str, read: Callable[..., Any]) -> Any:
        """`read(path, filesystem=…)` of dataset `name`: StoreError naming what exists if
        there is none, DataError if its file is unreadable."""
        if not self.has_dataset(name):
            raise StoreError(f"no dataset named {name!r} in the store{_hint(self.dataset_names())}")
        path = self._path("datasets", f"{name}.parquet")
        try:
            return read(path, filesystem=self._fs)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"dataset {name!r} in the store is unreadable: {e}") from e

    def has_dataset(self, name: str) -> bool:
        """Whether a dataset is stored under `name`."""
        check_name(name)
        path = self._path("datasets", f"{name}.parquet")
        return self._info(path).type == pafs.FileType.File

    # ---------------------------------------------------------------- results

    def append_results(self, rows: list[dict[str, Any]]) -> None:
        """Add result rows as a new file: appends from many processes never collide."""
        if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
            raise StoreError("results must be a list of dicts, one per row")
        if not rows:
            return
        try:
            table = pa.Table.from_pylist([dict(r) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise StoreError(f"result rows do not form a table: {e}") from e
        # A time prefix makes file order = append order, so `results()` keeps rows in the
        # order they were recorded; the uuid keeps simultaneous appends apart.
        file = f"{time.time_ns():020d}-{uuid.uuid4().hex}.parquet"
        self._write_parquet(self._path("results", file), table)

    def results(self) -> pa.Table:
        """All result rows in append order; columns missing from a file are null there."""
        tables = []
        for path in self._files("results", ".parquet"):
            try:
                tables.append(pq.read_table(path, filesystem=self._fs))
            except (pa.ArrowInvalid, OSError) as e:
                raise DataError(f"results file {path} is unreadable: {e}") from e
        if not tables:
            return pa.table({})
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise StoreError(f"stored results have conflicting column types: {e}") from e

    # ------------------------------------------------------------ small files

    # Bookkeeping that is not an item (the serve records of pipeline.inbox), with the
    # store's own atomic writes and one-line errors. `folder` is relative to the store.

    def put_file(self, folder: str, name: str, data: bytes) -> None:
        """Replace `<store>/<folder>/<name>` with `data` atomically."""
        self._write(self._path(folder, name), data)

    def get_file(self, folder: str, name: str) -> bytes | None:
        """The bytes of `<store>/<folder>/<name>`, or None if it does not exist."""
        return self._read(self._path(folder, name))

    def file_names(self, folder: str, suffix: str) -> list[str]:
        """Names of the committed files in `<store>/<folder>` ending in `suffix`, sorted."""
        return [path.rsplit("/", 1)[-1] for path in self._files(folder, suffix)]

    def delete_file(self, folder: str, name: str) -> None:
        """Delete `<store>/<folder>/<name>`; nothing if it is gone already."""
        path = self._path(folder, name)

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):
                self._fs.delete_file(path)

        self._guard(delete)

    # ------------------------------------------------------------------ admin

    def check_writable(self) -> None:
        """Write and delete a probe file; StoreError in one line if the store cannot be written."""
        if self._root and self._info(self._root).type == pafs.FileType.File:
            raise StoreError(
                f"store at {self._uri} is not writable: {self._root} is a file, not a folder"
            )
        probe = self._path(f".probe-{uuid.uuid4().hex}")
        self._write(probe, b"psec")
        self._guard(lambda: self._fs.delete_file(probe))

    # -------------------------------------------------------------- internals

    def _path(self, *parts: str) -> str:
        return "/".join([self._root, *parts]) if self._root else "/".join(parts)

    def _entry_path(self, name: str) -> str:
        return self._path("manifest", f"{name}.json")

    def _files(self, folder: str, suffix: str) -> list[str]:
        """Paths of committed files in a folder, sorted; temp files (dot-names) are skipped."""
        selector = pafs.FileSelector(self._path(folder), allow_not_found=True)
        return sorted(
            info.path
            for info in self._info(selector)
            if info.type == pafs.FileType.File
            and info.base_name.endswith(suffix)
            and not info.base_name.startswith(".")
        )

    def _names_hint(self) -> str:
        names = [os.path.basename(p)[: -len(".json")] for p in self._files("manifest", ".json")]
        return _hint(names)

    def _read(self, path: str) -> bytes | None:
        """A file's bytes, or None if it does not exist."""
        self._refuse_file_root()
        try:
            with self._fs.open_input_stream(path) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            # Object stores may report a missing key as a generic OSError.
            if self._info(path).type == pafs.FileType.NotFound:
                return None
            raise StoreError(f"store at {self._uri} cannot be read: {error_reason(e)}") from e

    def _info(self, what: str | pafs.FileSelector):
        """`get_file_info`; a failure (an unreachable endpoint, denied access, a missing
        bucket's listing) becomes the one-line 'cannot be read' StoreError."""
        if what != self._root:  # check_writable asks about the root itself
            self._refuse_file_root()
        try:
            return self._fs.get_file_info(what)
        except OSError as e:
            raise StoreError(f"store at {self._uri} cannot be read: {error_reason(e)}") from e

    def _refuse_file_root(self) -> None:
        """A local store whose folder is a file: every path under it reads as "not found",
        so a mistyped --store would pass for an empty store. Refuse it in one line."""
        if self._local and os.path.isfile(self._root):
            raise StoreError(
                f"store at {self._uri} cannot be read: {self._root} is a file, not a folder"
            )

    def _guard(self, write) -> None:
        """Run a write; a filesystem failure becomes the one-line 'not writable' StoreError."""
        try:
            write()
        except StoreError:
            raise
        except OSError as e:
            raise StoreError(f"store at {self._uri} is not writable: {error_reason(e)}") from e

    def _write(self, path: str, data: bytes | pa.Buffer, *, exclusive: bool = False) -> None:
        """Replace `path` with `data` atomically; with `exclusive`, fail if it already exists."""
        if self._local:
            self._guard(lambda: _write_local(path, lambda tmp: _write_file(tmp, data), exclusive))
            return

        def put() -> None:
            # Object stores: one PUT is atomic per object. Exclusive create cannot be had
            # here; the store actor serialises writers, this check covers the sequential case.
            if exclusive and self._fs.get_file_info(path).type != pafs.FileType.NotFound:
                raise _Exists(path)
            self._make_parent(path)
            with self._fs.open_output_stream(path) as f:
                f.write(data)

        self._guard(put)

    def _write_parquet(self, path: str, table: pa.Table) -> None:
        if self._local:
            self._guard(lambda: _write_local(path, lambda tmp: pq.write_table(table, tmp), False))
            return

        # The finished file in one PUT: an object-store upload stream closed on the way out
        # of an error (or a Ctrl-C) completes its upload, so writing the table straight to
        # it could commit a valid but truncated file.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self._write(path, sink.getvalue())

    def _make_parent(self, path: str) -> None:
        # Object stores need no folders, but HDFS-like filesystems do; "" is the mock root.
        if "/" in path:
            self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)

    @contextlib.contextmanager
    def _lock(self, name: str, *, shared: bool = False) -> Iterator[None]:
        """Per-name advisory lock on a local store (exclusive for writes); a no-op remotely."""
        check_name(name)
        if not self._local:
            yield
            return
        path = self._path(".locks", f"{name}.lock")
        try:
            if shared:
                # Readers never create lock files. No lock file means the name was never
                # written, or only its first registration is under way, which writes the
                # entry last: either way there is nothing half-replaced to see.
                fd = os.open(path, os.O_RDONLY)
            else:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if shared:
                yield
                return
            raise StoreError(f"store at {self._uri} is not writable: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            # Closing releases the lock. The lock file stays: unlinking it would let a
            # waiter hold a lock on an orphaned inode while a newcomer locks a new file.
            os.close(fd)


class _Exists(Exception):
    """An exclusive write found its target present (deliberately not an OSError)."""


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        # On disk before the rename, so a manifest entry never points at unwritten weights.
        os.fsync(f.fileno())


def _write_local(path: str, fill, exclusive: bool) -> None:
    """Write via a temp file in the same folder, then rename (or hard-link if exclusive)."""
    folder, base = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{base}.{uuid.uuid4().hex}.tmp")
    try:
        fill(tmp)
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            # link() fails if `path` exists: the atomic create-if-absent.
            os.link(tmp, path)
        except FileExistsError:
            raise _Exists(path) from None
        except OSError:
            # A filesystem without hard links; the per-name lock still serialises writers.
            if os.path.exists(path):
                raise _Exists(path) from None
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _with_gcs_retry_limit(uri: str) -> str:
    """`uri`, with `retry_limit_seconds=GCS_RETRY_LIMIT_S` added to a gs:// (or gcs://) URI
    whose query sets none."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("gs", "gcs"):
        return uri
    if "retry_limit_seconds" in dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)):
        return uri
    limit = f"retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    return urllib.parse.urlunsplit(
        parts._replace(query=f"{parts.query}&{limit}" if parts.query else limit)
    )


def error_reason(error: OSError) -> str:
    """A filesystem error's message, without the `error_info={…}` block google-cloud-cpp
    (pyarrow's GCS) appends, which repeats the message with retry metadata."""
    return str(error).split(" error_info={", 1)[0]


def _hint(names: list[str]) -> str:
    if not names:
        return " (it is empty)"
    shown = ", ".join(names[:_HINT_NAMES])
    more = f" and {len(names) - _HINT_NAMES} more" if len(names) > _HINT_NAMES else ""
    return f" (it holds {shown}{more})"
