"""How new task specs reach a running `psec serve` driver: a named, detached Ray actor.

`psec submit SPEC.yaml` validates the spec where the user is (a bad spec never reaches
the cluster), then `put`s it here; the serving driver `take`s specs one at a time, runs
each as a one-task continuation of what the store holds, and reports back with `finish`.
The actor is detached, so specs submitted while no driver is serving wait for the next
one, and it is named after the store, so each store has its own queue.

Two records say who serves a store, one on each side of the Ray connection:

* *In the inbox, a lease per serving driver.* `attach` opens it, the driver renews it
  with `heartbeat` every HEARTBEAT_S from a thread (`serving_lease`), `detach` closes it.
  A driver killed outright (SIGKILL, the OOM killer, a lost node) never detaches; its
  lease lapses LEASE_S after its last beat, it stops being counted, and a submission it
  was running goes back to the front of the queue, where the next driver takes it as a
  retry (`Submission.attempts`) and resumes it. A lease rather than a pid, because
  the inbox may live on another node than the driver; a heartbeat thread rather than the
  driver's polls, because a driver busy with a fit polls nothing for hours.
* *In the store, a `ServeRecord` per serving driver* (`<store>/serving/<token>.json`):
  the Ray address where it runs, its host and pid. `psec submit` without `--address`
  reads it to reach the Ray instance of the serve of *that* store — it never guesses at
  Ray instances on the machine (the newest one may be some `psec tune`'s private
  instance). A record whose pid is gone from this host is stale and removed before Ray
  is touched; one from elsewhere is checked against its lease in the inbox.

The queue lives in the actor's memory: it survives driver restarts, not a restart of the
Ray cluster. What was fitted survives anyway, in the store.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from typing import Any, Literal

import ray
from pydantic import BaseModel, ConfigDict, ValidationError

from library.errors import StoreError
from library.store import SkillStore
from pipeline.runtime import NAMESPACE, store_actor_name

Status = Literal["pending", "running", "done", "failed"]

LEASE_S = 30.0
"""A serving driver counts as serving while its last heartbeat is younger than this."""
HEARTBEAT_S = 2.0
"""How often a serving driver renews its lease: many beats per lease, so a driver on a
busy machine whose beats come late is not dropped."""
SERVING_FOLDER = "serving"
"""`<store>/serving/<token>.json`: one `ServeRecord` per running `psec serve`."""


class Submission(BaseModel):
    """One submitted task spec and what became of it."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    id: str
    """Unique id handed back to the submitter."""
    spec: dict[str, Any]
    """The task spec as plain JSON (already validated by the submitter)."""
    submitted: float
    """Unix time of submission."""
    status: Status = "pending"
    """pending → running → done | failed."""
    message: str = ""
    """One line: the registered names on success, the error on failure."""
    attempts: int = 0
    """How many times a driver has taken it (`take` counts). Above 1 when a driver took it
    before and stopped without finishing it — killed (its lease lapsed) or interrupted (it
    put it back with `requeue`): the items of its task already in the store may then be
    that driver's work, which the next driver resumes (`retried`)."""

    @property
    def retried(self) -> bool:
        """Whether an earlier driver took this submission and stopped before finishing it."""
        return self.attempts > 1


class InboxQueue:
    """A FIFO of submissions with their statuses, and the leases of the drivers serving it.

    Plain Python (the Ray actor `Inbox` wraps it), so its bookkeeping is tested without
    Ray; `clock` is injectable for the same reason."""

    def __init__(self, lease_s: float = LEASE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lease_s = lease_s
        self._clock = clock
        # The actor runs up to max_concurrency calls at once, in threads.
        self._lock = threading.Lock()
        self._queue: deque[str] = deque()
        self._all: dict[str, Submission] = {}
        self._leases: dict[str, float] = {}  # serving driver's token -> when its lease lapses
        self._taken: dict[str, str] = {}  # running submission's id -> its driver's token

    def attach(self) -> str:
        """A serving driver starts; returns its token for `heartbeat`, `take`, `detach`."""
        token = uuid.uuid4().hex
        with self._lock:
            self._leases[token] = self._clock() + self._lease_s
        return token

    def heartbeat(self, token: str) -> bool:
        """Renew the lease of `token`; False when it had lapsed (the driver was silent
        longer than the lease: it is counted again from now, but a submission it was
        running has gone back to the queue)."""
        with self._lock:
            self._expire()
            live = token in self._leases
            self._leases[token] = self._clock() + self._lease_s
        return live

    def detach(self, token: str) -> None:
        with self._lock:
            self._leases.pop(token, None)

    def serving(self) -> int:
        """How many drivers serve this inbox now (live leases only)."""
        with self._lock:
            self._expire()
            return len(self._leases)

    def serves(self, token: str) -> bool:
        """Whether the driver holding `token` still serves (its lease is live)."""
        with self._lock:
            self._expire()
            return token in self._leases

    def put(self, spec: dict[str, Any]) -> str:
        submission = Submission(id=uuid.uuid4().hex[:12], spec=spec, submitted=time.time())
        with self._lock:
            self._all[submission.id] = submission
            self._queue.append(submission.id)
        return submission.id

    def take(self, token: str) -> Submission | None:
        """The oldest pending submission, now marked running under `token`; None if the
        queue is empty. Asking is a sign of life, so it renews the lease too."""
        with self._lock:
            self._expire()
            self._leases[token] = self._clock() + self._lease_s
            if not self._queue:
                return None
            submission = self._all[self._queue.popleft()]
            submission.status = "running"
            submission.attempts += 1
            self._taken[submission.id] = token
            return submission

    def finish(self, submission_id: str, ok: bool, message: str) -> None:
        with self._lock:
            submission = self._all[submission_id]
            submission.status = "done" if ok else "failed"
            submission.message = message
            self._taken.pop(submission_id, None)
            # Requeued while its driver's lease had lapsed, yet that driver finished it.
            if submission_id in self._queue:
                self._queue.remove(submission_id)

    def requeue(self, submission_id: str) -> None:
        """Put a running submission back at the front: its driver stops before finishing it
        (interrupted), so the next `take` is a retry that resumes it."""
        with self._lock:
            self._requeue(submission_id)

    def get(self, submission_id: str) -> Submission | None:
        with self._lock:
            self._expire()
            return self._all.get(submission_id)

    def pending(self) -> int:
        with self._lock:
            self._expire()
            return len(self._queue)

    def _requeue(self, submission_id: str) -> None:
        self._taken.pop(submission_id, None)
        submission = self._all[submission_id]
        submission.status = "pending"
        self._queue.appendleft(submission_id)

    def _expire(self) -> None:
        """Drop lapsed leases; what their drivers were running is pending again, first in
        line (the caller holds the lock)."""
        now = self._clock()
        lapsed = {token for token, until in self._leases.items() if until < now}
        for token in lapsed:
            del self._leases[token]
        # Newest first, each to the front: they queue again in the order they were taken.
        for submission_id in reversed([s for s, token in self._taken.items() if token in lapsed]):
            self._requeue(submission_id)


Inbox = ray.remote(num_cpus=0, max_concurrency=4)(InboxQueue)
"""The Ray actor: one per store, named by `inbox_name`, detached."""


def inbox_name(store_uri: str) -> str:
    """One inbox per store (by its absolute URI)."""
    return store_actor_name("inbox", store_uri)


def inbox_actor(store_uri: str, lease_s: float = LEASE_S) -> ray.actor.ActorHandle:
    """Get or create the detached inbox of the store at `store_uri` (an absolute URI);
    `lease_s` applies only when this call creates it."""
    return Inbox.options(
        name=inbox_name(store_uri), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(lease_s)


def existing_inbox(store_uri: str) -> ray.actor.ActorHandle | None:
    """The store's inbox on the connected Ray cluster, or None where it has none (never
    creates one)."""
    try:
        return ray.get_actor(inbox_name(store_uri), namespace=NAMESPACE)
    except ValueError:
        return None


# ------------------------------------------------------------------ serve records


class ServeRecord(BaseModel):
    """Where a running `psec serve` of a store can be reached (`<store>/serving/`)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    token: str
    """Its lease token in the store's inbox."""
    address: str
    """GCS address (`host:port`) of the Ray instance it runs on."""
    host: str
    """Host name of the machine it runs on."""
    process_space: str
    """Host name and pid namespace: where `pid` means this process (`process_space()`)."""
    pid: int
    """Its process id."""
    started: str
    """When it started serving (ISO UTC)."""


def process_space() -> str:
    """Where pids of this process are meaningful: the host name, plus the pid namespace on
    Linux (a container can share the host's name but not its pids)."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()}/pidns:{namespace}"


def new_record(token: str, address: str) -> ServeRecord:
    """The record of this process serving under `token` on the Ray instance at `address`."""
    return ServeRecord(token=token, address=address, host=socket.gethostname(),
                       process_space=process_space(), pid=os.getpid(),
                       started=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def is_stale(record: ServeRecord) -> bool:
    """Whether the record is known dead without asking Ray: made in this process space by
    a pid that no longer runs (killed outright: it never removed its record)."""
    return record.process_space == process_space() and not _pid_runs(record.pid)


def _pid_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # somebody else's process
    # A killed process nobody has reaped yet is a zombie: gone for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): signal 0 is all there is


def _record_file(token: str) -> str:
    return f"{token}.json"


def write_record(store: SkillStore, record: ServeRecord) -> None:
    """Publish `record` in the store (atomically: a reader never sees half of it)."""
    store.put_file(SERVING_FOLDER, _record_file(record.token),
                   record.model_dump_json(indent=2).encode())


def remove_record(store: SkillStore, token: str) -> None:
    """Withdraw the record of `token` (nothing if it is gone already)."""
    # A record left behind (a read-only store here) names a pid that no longer runs and a
    # lapsed lease, so it is recognised as stale anyway.
    with suppress(StoreError):
        store.delete_file(SERVING_FOLDER, _record_file(token))


def serve_records(store: SkillStore) -> list[ServeRecord]:
    """The live-looking records of the store, newest first; stale ones (`is_stale`) are
    removed on the way. Only serve records are ever removed: nothing stored is touched."""
    records = []
    for name in store.file_names(SERVING_FOLDER, ".json"):
        data = store.get_file(SERVING_FOLDER, name)
        if data is None:
            continue  # its serve stopped while we listed
        try:
            record = ServeRecord.model_validate_json(data)
        except ValidationError:
            continue  # not ours to judge or delete: written by another psec version
        if is_stale(record):
            remove_record(store, record.token)
        else:
            records.append(record)
    return sorted(records, key=lambda record: record.started, reverse=True)


@contextmanager
def serving_lease(store: SkillStore, inbox: ray.actor.ActorHandle) -> Iterator[str]:
    """Serve `store` through `inbox` for the duration of the block: attach, keep the lease
    alive from a thread, publish a `ServeRecord`; yields the lease token. Undone on the
    way out, however the block ends; a process killed outright leaves both behind, which
    its lapsed lease and its dead pid give away."""
    token = ray.get(inbox.attach.remote())
    stop = threading.Event()
    beats = threading.Thread(target=_keep_lease, args=(inbox, token, stop),
                             name="psec-serve-lease", daemon=True)
    beats.start()
    try:
        write_record(store, new_record(token, ray.get_runtime_context().gcs_address))
        yield token
    finally:
        stop.set()
        beats.join()
        remove_record(store, token)
        ray.get(inbox.detach.remote(token))


def _keep_lease(inbox: ray.actor.ActorHandle, token: str, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        try:
            renewed = ray.get(inbox.heartbeat.remote(token))
        except ray.exceptions.RayError:
            return  # the inbox or the cluster is gone: the serving loop meets it and says so
        if not renewed:
            print(f"psec serve: warning: no heartbeat reached the inbox for over {LEASE_S:.0f} s; "
                  "a task running here went back to the queue", file=sys.stderr, flush=True)
