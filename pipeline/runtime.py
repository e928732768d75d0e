"""Starting or attaching to Ray, and sizing work from what the cluster holds.

Every entry point of the pipeline (the CLI, the benchmarks, the tests' helpers) goes
through `connect`, so the choices below are made once:

* Ray 2.60 turns token authentication on by default for a local instance. A local
  machine, CI and `ray job submit` against a `ray start --head` started with
  RAY_AUTH_MODE=disabled all need it off, so `connect` sets RAY_AUTH_MODE=disabled unless
  the user chose a mode; a cluster with tokens keeps working with RAY_AUTH_MODE=token.
* Without an address, `ray.init()` attaches to whatever local cluster was started last
  (/tmp/ray/ray_current_cluster). On a shared machine that is somebody else's instance,
  so `psec run` and `psec serve` start their own unless given `--address` or run under
  `ray job submit` (which sets RAY_ADDRESS); `psec submit` goes to the Ray address its
  store's serve recorded (pipeline/inbox.py).
* A Ray Train run that asks for more CPUs than exist waits forever, so every fit is
  sized from `ray.cluster_resources()` (`plan_fit_resources`).
* Ray stops idle worker processes within a second once a node runs more workers than
  its soft limit (RAY_num_workers_soft_limit): left unset, a fit or an evaluation on a
  small machine often started a new process and imported torch, Ray Train and the
  simulator again. A local instance sets it to its CPUs + `SPARE_WORKERS`
  (`keep_idle_workers`); a cluster's nodes set the same in cluster.yaml.
* Ray gives a new local node a fixed 30 s to register its raylet; on 2 busy cores that
  ran out now and then. A private local instance is started again (`LOCAL_START_RETRIES`);
  attaching to a cluster is not retried.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import socket
from dataclasses import dataclass

from library.errors import PsecError

LOCAL_START_RETRIES = 2
"""How often `connect` starts a private local instance again after Ray's fixed 30 s wait
for its raylet ran out (seen on 2 cores with fits and tests beside it): the start is
slow, not broken."""
STARTUP_TIMEOUT = "timed out during startup"
"""What Ray's exception says when a node's raylet did not register within that wait."""

NAMESPACE = "psec"
"""Ray namespace of every named actor of the pipeline (store actor, inbox, fit claims,
progress)."""


def store_actor_name(role: str, store_uri: str) -> str:
    """`psec-<role>-<16 hex>`: the name of a store's one actor of `role` (store, inbox,
    fit-claims), by the store's absolute URI (which may be long)."""
    return f"psec-{role}-" + hashlib.sha256(store_uri.encode()).hexdigest()[:16]

AUTH_MODE_VAR = "RAY_AUTH_MODE"


def disable_token_auth_unless_chosen() -> None:
    """Set RAY_AUTH_MODE=disabled unless the user set a mode; must run before `ray.init`."""
    os.environ.setdefault(AUTH_MODE_VAR, "disabled")


WORKER_LIMIT_VAR = "RAY_num_workers_soft_limit"
SPARE_WORKERS = 4
"""Idle worker processes a node keeps beyond one per CPU: room for the pipeline's own
actors (store, progress board, inbox, a fit's curve rollouts). `python -m benchmarks.worker_reuse`
measures it (docs/BENCHMARKS.md: the DMC smoke stream 95.8 s → 69.2 s on 2 cores, 9 → 5
worker processes); on CW10's smoke stream any limit from 2 to 16 did as well as another."""


def worker_limit(num_cpus: int | None = None) -> int:
    """The worker processes a node of `num_cpus` CPUs (default: this machine's) keeps
    before it stops idle ones (cluster.yaml and scripts/job_submit_smoke.sh print it for
    `ray start`)."""
    return (num_cpus or os.cpu_count() or 1) + SPARE_WORKERS


def keep_idle_workers(num_cpus: int | None) -> None:
    """Let a Ray node about to start in this process keep `worker_limit` workers, unless
    the user set the limit; must run before `ray.init` starts a local instance."""
    os.environ.setdefault(WORKER_LIMIT_VAR, str(worker_limit(num_cpus)))


_local_cpus: int | None = None
"""Logical CPUs of the private local instance `connect` starts when not told (`--cpus`)."""


def add_cpus_option(parser: argparse.ArgumentParser) -> None:
    """`--cpus N` of the commands that may start a private local Ray instance."""
    parser.add_argument(
        "--cpus", type=int, default=None, metavar="N",
        help="logical CPUs of the private local Ray instance (default: this machine's). "
             "Fewer leaves the rest of a shared machine alone; more than its cores runs "
             "more one-thread fits at once, which keeps every core busy when a search's "
             "long trials end at different times")


def use_cpus_option(args: argparse.Namespace) -> None:
    """Apply a parsed `--cpus` before anything connects; PsecError where it cannot apply."""
    cpus = getattr(args, "cpus", None)
    if cpus is None:
        return
    if cpus < 1:
        raise PsecError(f"--cpus must be >= 1, got {cpus}")
    address = getattr(args, "address", None) or os.environ.get("RAY_ADDRESS")
    if address:
        raise PsecError(f"--cpus sizes a private local Ray instance; the cluster at "
                        f"{address!r} has its own CPUs")
    global _local_cpus
    _local_cpus = cpus


def connect(address: str | None = None, num_cpus: int | None = None) -> None:
    """Attach to the Ray cluster at `address` ("auto", "host:port", "ray://..."), or start a
    private local instance when neither `address` nor RAY_ADDRESS is given.

    Does nothing when Ray is already initialised in this process (tests start their own
    `ray.init(num_cpus=2)`; Ray workers calling pipeline code are already connected).
    """
    disable_token_auth_unless_chosen()
    import ray

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    if address not in (None, "auto", "local"):
        check_reachable(address)
    local = address == "local"
    if local:
        num_cpus = _local_cpus if num_cpus is None else num_cpus
        keep_idle_workers(num_cpus)
    for attempt in range(1 + (LOCAL_START_RETRIES if local else 0)):
        before = _children() if local else set()  # only a local start is cleaned up
        try:
            ray.init(
                address=address,
                namespace=NAMESPACE,
                num_cpus=num_cpus if local else None,
                # Train's controller and worker logs would bury the progress bars; errors
                # still reach the driver as exceptions.
                log_to_driver=os.environ.get("PSEC_RAY_LOGS", "0") == "1",
                configure_logging=True,
                logging_level=logging.WARNING,
            )
            return
        except ConnectionError as error:
            raise PsecError(f"cannot reach a Ray cluster at {address!r}: {error}") from None
        except Exception as error:  # Ray raises a bare Exception for a slow start
            if not local or STARTUP_TIMEOUT not in str(error):
                raise
            ray.shutdown()
            _kill(_children() - before)  # the GCS and raylet of the attempt: nothing owns them
            if attempt == LOCAL_START_RETRIES:
                raise PsecError(f"a local Ray instance did not start in {attempt + 1} "
                                "attempts of Ray's 30 s (the machine is too busy?): "
                                f"{error}") from None
            logging.getLogger(__name__).warning(
                "a local Ray instance timed out during startup; starting it again")


def _children() -> set[int]:
    """Process ids whose parent is this process (Linux /proc; empty elsewhere)."""
    own, found = os.getpid(), set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after ")".
                if int(f.read().rsplit(")", 1)[1].split()[1]) == own:
                    found.add(int(entry))
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    return found


def _kill(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """PsecError in one line unless something listens at `address` ('host:port' or
    'ray://host:port'). Where nothing does, `ray.init` retries for minutes and prints a
    warning per attempt; one TCP connection tells the same in seconds."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise PsecError(f"--address {address!r} is not 'auto', 'host:port' or "
                        "'ray://host:port'")
    hosts = [host]
    if host in ("localhost", "127.0.0.1"):
        import ray.util

        hosts.append(ray.util.get_node_ip_address())  # where Ray itself dials these
    for candidate in hosts:
        try:
            socket.create_connection((candidate, int(port)), timeout=timeout).close()
            return
        except OSError as error:
            refused = error
    raise PsecError(f"cannot reach a Ray cluster at {address!r}: "
                    f"{refused.strerror or refused}")


@dataclass(frozen=True)
class FitResources:
    """How one fit (one Ray Train run) is laid out on the cluster."""

    workers: int
    """Number of Ray Train workers (data-parallel replicas) of the fit."""
    cpus_per_worker: int
    """CPUs reserved by each worker; also its torch thread count."""
    gpus_per_worker: float
    """GPUs reserved by each worker (0 on CPU-only clusters; may be fractional)."""

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


def plan_fit_resources(
    resources: dict[str, float],
    concurrent_fits: int = 2,
    workers: int | None = None,
    cpus_per_worker: int | None = None,
) -> FitResources:
    """Size one fit so that `concurrent_fits` of them fit the cluster side by side.

    `resources` is `ray.cluster_resources()`. Explicit `workers`/`cpus_per_worker` are
    honoured but capped at what exists: a request beyond the cluster would never be
    scheduled. On a 2-CPU machine the default is 1 worker with 1 CPU, so two fits (e.g.
    two skills on the same base) run at once.

    A fit's share of CPUs goes to data-parallel workers of one CPU each rather than to
    torch threads: the networks are small, intra-op threading scales poorly on them, and
    OpenMP threads that spin-wait collapse (6× slower measured) when the machine is busier
    than its CPU count. With GPUs, a fit gets whole GPUs when there are enough for every
    concurrent fit, else a share of one.
    """
    total_cpus = int(resources.get("CPU", 0))
    total_gpus = float(resources.get("GPU", 0.0))
    if total_cpus < 1:
        raise PsecError("the Ray cluster has no CPU to run a fit on")
    concurrent_fits = max(1, concurrent_fits)
    share = max(1, total_cpus // concurrent_fits)  # CPUs one fit may take
    gpus_per_worker = 0.0
    if total_gpus > 0:
        if workers is None:
            workers = max(1, int(total_gpus // concurrent_fits))
        if cpus_per_worker is None:
            cpus_per_worker = max(1, share // workers)
    if cpus_per_worker is None:
        cpus_per_worker = 1
    cpus_per_worker = max(1, min(cpus_per_worker, total_cpus))
    if workers is None:
        workers = max(1, share // cpus_per_worker)
    workers = max(1, min(workers, total_cpus // cpus_per_worker))
    if total_gpus > 0:
        gpus_per_worker = min(1.0, total_gpus / (workers * concurrent_fits))
    return FitResources(workers=workers, cpus_per_worker=cpus_per_worker,
                        gpus_per_worker=gpus_per_worker)
