"""`psec serve` and `psec submit`: a long-running driver and how task specs reach it.

A submitted task becomes a one-task continuation of the store (`plan_submission`) that
`serve` runs with the same driver as a stream (`pipeline.driver.run_plan`). Specs travel
through the store's inbox actor (pipeline.inbox); a serving driver holds a lease there
and a serve record in the store, by which `submit` finds it.
"""

from __future__ import annotations

import math
import os
import sys
import time

import ray

from library.errors import PsecError, StoreError
from library.store import SkillStore
from pipeline.checks import check_plan
from pipeline.driver import DriverOptions, StreamSummary, run_plan
from pipeline.inbox import (
    Submission,
    existing_inbox,
    inbox_actor,
    remove_record,
    serve_records,
    serving_lease,
)
from pipeline.plan import StreamPlan, plan_task
from pipeline.runtime import connect
from tasks.spec import TaskSpec, dump, load_task, parse_task


def _served_position(store: SkillStore, retried: str | None = None) -> int:
    """The position in the `served` stream (which the stage seeds derive from) of a task
    submitted now: after every task served so far. `retried` names a task that an earlier
    driver was running when it stopped: where that attempt recorded results, the task keeps
    the position they carry, so a resumed task fits with the seeds of an uninterrupted one
    (it is not counted among the tasks served before it)."""
    results = store.results()
    if results.num_rows == 0 or "stream" not in results.column_names:
        return 0
    served = [(task, position) for stream, task, position in zip(
        results.column("stream").to_pylist(), results.column("task").to_pylist(),
        results.column("position").to_pylist()) if stream == "served"]
    if retried is not None:
        recorded = [position for task, position in served if task == retried]
        if recorded:
            return min(recorded)
    return len({task for task, _ in served})


def plan_submission(task: TaskSpec, store: SkillStore, retried: bool = False) -> StreamPlan:
    """A submitted task as a one-task continuation of the store.

    A new submission must bring new names: one already in the store is a clash with
    something else. A `retried` one (`Submission.retried`: a driver was running it and
    stopped) may find items of its own in the store, stored by that driver; it resumes
    like a stream run again — `check_plan` keeps those stored from the same spec and
    refuses those from another. An item stored without a task spec was never stored by
    a driver, so it clashes either way."""
    taken = [name for name in task.stored_names() if store.exists(name)
             and (not retried or store.entry(name).task_spec is None)]
    if taken:
        raise StoreError(f"{', '.join(map(repr, taken))} already in the store: "
                         "a submitted task must bring new names")
    bases = [entry.name for entry in store.list("base")]
    position = _served_position(store, task.name if retried else None)
    return plan_task(task, bases, position=position)


SERVER_WAIT_S = 30.0
"""How long `psec submit --wait` waits for a `psec serve` of the store to attach."""


def submit(spec_path: str, store_uri: str, address: str | None = None,
           wait: bool = False, poll: float = 1.0) -> Submission:
    """`psec submit`: validate the spec and check it against the store, then queue it.

    Without `address` (and RAY_ADDRESS) it goes to the `psec serve` recorded in the store,
    on that server's own Ray instance; where none serves the store that is a PsecError and
    nothing is queued (with `wait`, once none has appeared within SERVER_WAIT_S). With an
    address it goes to that cluster's inbox, where it waits for the next server if none
    runs yet. With `wait`, follow it until a driver has run it; where no driver serves the
    store (none attaches within SERVER_WAIT_S) that is a PsecError instead of a wait
    without end — before queueing, or, if the driver stops, with the spec left in the
    queue."""
    task = load_task(spec_path)
    store = SkillStore(store_uri)
    check_plan(plan_submission(task, store), store)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        inbox = _recorded_server_inbox(store, wait)
    else:
        connect(address)
        inbox = inbox_actor(store.uri)
    if wait:
        _await_server(inbox, store.uri, None)
    submission_id = ray.get(inbox.put.remote(dump(task)))
    submission = ray.get(inbox.get.remote(submission_id))
    while wait and submission.status in ("pending", "running"):
        if submission.status == "pending":
            _await_server(inbox, store.uri, submission_id)
        time.sleep(poll)
        submission = ray.get(inbox.get.remote(submission_id))
    return submission


def _recorded_server_inbox(store: SkillStore, wait: bool) -> ray.actor.ActorHandle:
    """The inbox of the newest `psec serve` recorded in the store, on its Ray instance.
    Ray is started only once a live-looking record names where: `ray.init("auto")` would
    take whatever instance started last on this machine, serving or not."""
    start = f"start one with `psec serve --store {store.uri}`"
    deadline = time.monotonic() + (SERVER_WAIT_S if wait else 0.0)
    while not (records := serve_records(store)):
        if time.monotonic() >= deadline:
            raise PsecError(f"no psec serve is serving the store at {store.uri}: nothing was "
                            f"queued ({start}, or name a Ray cluster to queue on with "
                            f"--address)")
        time.sleep(0.5)
    record = records[0]
    where = f"the psec serve recorded for it (pid {record.pid} on {record.host})"
    try:
        connect(record.address)
    except PsecError as error:
        raise PsecError(f"{where} cannot be reached for the store at {store.uri}: {error} "
                        f"(if it stopped, {start})") from None
    attached_to = ray.get_runtime_context().gcs_address
    if attached_to != record.address:
        raise PsecError(f"this process is attached to Ray at {attached_to}, but {where} "
                        f"runs on Ray at {record.address}")
    inbox = existing_inbox(store.uri)
    if inbox is None or not ray.get(inbox.serves.remote(record.token)):
        # Killed outright on another host (or its Ray instance restarted): its lease lapsed.
        remove_record(store, record.token)
        raise PsecError(f"no psec serve is serving the store at {store.uri}: {where} on Ray "
                        f"at {record.address} has stopped; nothing was queued ({start})")
    return inbox


def serving(store_uri: str) -> int:
    """How many `psec serve` drivers serve the store's inbox (Ray must be connected)."""
    return ray.get(inbox_actor(SkillStore(store_uri).uri).serving.remote())


def _await_server(inbox: ray.actor.ActorHandle, store_uri: str,
                  submission_id: str | None) -> None:
    """Return once a driver serves `inbox`; PsecError if none does within SERVER_WAIT_S."""
    deadline = time.monotonic() + SERVER_WAIT_S
    while not ray.get(inbox.serving.remote()):
        if time.monotonic() > deadline:
            left = ("nothing was queued" if submission_id is None
                    else f"submission {submission_id} stays queued for the next one")
            raise PsecError(
                f"no psec serve is running for the store at {store_uri} on the Ray cluster "
                f"at {ray.get_runtime_context().gcs_address}: {left} "
                f"(start one with `psec serve --store {store_uri}`)")
        time.sleep(min(0.5, SERVER_WAIT_S))


def serve(store_uri: str, address: str | None = None, max_tasks: int | None = None,
          once: bool = False, poll: float = 1.0, options: DriverOptions | None = None,
          record: list[StreamSummary] | None = None) -> int:
    """`psec serve`: take submissions from the store's inbox and run each; returns how many
    were served (and appends each run's summary to `record` when given). A submission
    that fails (bad against the store, a failed fit) is marked failed with its one-line
    error and the server goes on. One that an earlier driver was running when it stopped
    (killed: its lease lapsed; interrupted: it put it back) is resumed: what that driver
    stored from the same spec is kept, the rest is fitted and evaluated. The store is this
    driver's alone meanwhile (pipeline/store_lease.py)."""
    from pipeline.store_lease import driver_lease

    with driver_lease(store_uri, "psec serve"):
        return _serve_inbox(SkillStore(store_uri), address, max_tasks, once, poll, options,
                            record)


def _serve_inbox(store: SkillStore, address: str | None, max_tasks: int | None, once: bool,
                 poll: float, options: DriverOptions | None,
                 record: list[StreamSummary] | None) -> int:
    # Like `psec run`: a private instance unless told where (an "auto" attach could land
    # in another program's instance); `psec submit` finds it through the serve record.
    connect(address)
    inbox = inbox_actor(store.uri)
    print(f"psec serve: store {store.uri} on Ray at {ray.get_runtime_context().gcs_address}; "
          f"send tasks with `psec submit SPEC.yaml --store {store.uri}`",
          file=sys.stderr, flush=True)
    served = 0
    # Leased and recorded while serving, so `psec submit` finds this driver and can tell
    # that someone serves — and can tell once it no longer does, even if it was killed.
    with serving_lease(store, inbox) as token:
        while max_tasks is None or served < max_tasks:
            submission: Submission | None = ray.get(inbox.take.remote(token))
            if submission is None:
                if once:
                    break
                time.sleep(poll)
                continue
            try:
                task = parse_task(submission.spec)
                plan = plan_submission(task, store, retried=submission.retried)
                summary = run_plan(plan, store.uri, options)
            except PsecError as error:
                ray.get(inbox.finish.remote(submission.id, False, str(error)))
            except KeyboardInterrupt:
                ray.get(inbox.requeue.remote(submission.id))
                raise
            except Exception as error:  # a crash in one fit must not stop the server
                message = " ".join(f"{type(error).__name__}: {error}".split())[:500]
                ray.get(inbox.finish.remote(submission.id, False, message))
            else:
                if record is not None:
                    record.append(summary)
                fitted = ", ".join(summary.fitted) or "nothing new"
                # A retry names what it kept of the stopped attempt's work.
                kept = f"kept {', '.join(summary.skipped)}; " \
                    if submission.retried and summary.skipped else ""
                scores = "; ".join(f"{s.name} {s.score:.3f}" for s in summary.scores
                                   if not math.isnan(s.score))
                ray.get(inbox.finish.remote(submission.id, True,
                                            f"fitted {fitted}; {kept}{scores}"))
            served += 1
    return served
