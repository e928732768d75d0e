"""How new task specs reach a running `psec serve` driver: a named, detached Ray actor.

`psec submit SPEC.yaml` validates the spec where the user is (a bad spec never reaches
the cluster), then `put`s it here; the serving driver `take`s specs one at a time, runs
each as a one-task continuation of what the store holds, and reports back with `finish`.
The actor is detached, so specs submitted while no driver is serving wait for the next
one, and it is named after the store, so each store has its own queue. Serving drivers
`attach` and `detach`, so a submitter can tell whether anyone is serving (`psec submit
--wait` must not wait for a driver that does not exist); a driver killed outright stays
counted until the actor goes.

The queue lives in the actor's memory: it survives driver restarts, not a restart of the
Ray cluster. What was fitted survives anyway, in the store.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from typing import Any, Literal

import ray
from pydantic import BaseModel, ConfigDict

from pipeline.runtime import NAMESPACE

Status = Literal["pending", "running", "done", "failed"]


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


@ray.remote(num_cpus=0, max_concurrency=4)
class Inbox:
    """A FIFO of submissions with their statuses."""

    def __init__(self) -> None:
        self._queue: deque[str] = deque()
        self._all: dict[str, Submission] = {}
        self._drivers: set[str] = set()

    def attach(self) -> str:
        """A serving driver starts; returns its token for `detach`."""
        token = uuid.uuid4().hex
        self._drivers.add(token)
        return token

    def detach(self, token: str) -> None:
        self._drivers.discard(token)

    def serving(self) -> int:
        """How many drivers serve this inbox now."""
        return len(self._drivers)

    def put(self, spec: dict[str, Any]) -> str:
        submission = Submission(id=uuid.uuid4().hex[:12], spec=spec, submitted=time.time())
        self._all[submission.id] = submission
        self._queue.append(submission.id)
        return submission.id

    def take(self) -> Submission | None:
        """The oldest pending submission, now marked running; None if the queue is empty."""
        if not self._queue:
            return None
        submission = self._all[self._queue.popleft()]
        submission.status = "running"
        return submission

    def finish(self, submission_id: str, ok: bool, message: str) -> None:
        submission = self._all[submission_id]
        submission.status = "done" if ok else "failed"
        submission.message = message

    def requeue(self, submission_id: str) -> None:
        """Put a running submission back at the front (its driver stopped before it ran)."""
        submission = self._all[submission_id]
        submission.status = "pending"
        self._queue.appendleft(submission_id)

    def get(self, submission_id: str) -> Submission | None:
        return self._all.get(submission_id)

    def pending(self) -> int:
        return len(self._queue)


def inbox_name(store_uri: str) -> str:
    """One inbox per store (by its absolute URI)."""
    return "psec-inbox-" + hashlib.sha256(store_uri.encode()).hexdigest()[:16]


def inbox_actor(store_uri: str) -> ray.actor.ActorHandle:
    """Get or create the detached inbox of the store at `store_uri` (an absolute URI)."""
    return Inbox.options(
        name=inbox_name(store_uri), namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()
