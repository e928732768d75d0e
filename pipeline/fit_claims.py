"""One fit per unit across the drivers on a cluster: a unit that another driver is fitting
into the same store is waited for, not fitted a second time.

`psec tune` runs its trials as drivers side by side (one `run_point` each), and trials
that differ only in how they compose fit the same new skill (it is named after what
decides it: task, rank, seed...). Before this, two such trials running at once each
fitted it from the start and the later one found it registered at the end: on the Car
Run search, NSEC seed 2 spent 2.5 hours of a core on the safety skill PSEC seed 2 was
fitting beside it. The same happens to two `psec run` drivers or jobs on one cluster and
store.

A claim is keyed by the items a unit registers (`claim_key`). The claims live in one
detached actor per store (named like the store actor, in the `psec` namespace), so every
driver of every job on the cluster sees them:

* a driver `offer`s a unit before it launches it: the first gets the claim, launches its
  fit and `publish`es the fit's ObjectRef (in a list, so that Ray hands the ref itself
  on); a later one gets that ref and waits on it as on a fit of its own (or, in the
  instant between offer and publish, asks again);
* the owner `release`s the claim when its fit has ended, however it ended;
* a waiter whose ref cannot be read (its owner's process died, or its fit was cancelled
  with its driver) `release`s the claim in the owner's name and offers again: it then
  finds the items registered or fits the unit itself. A claim never published within
  `PUBLISH_S` (its driver died between offer and publish) is granted to the next offer.

The actor keeps nothing on disk: if it is lost, it starts again empty (or a driver that
cannot reach it fits the unit itself), and two drivers may fit a unit twice, which costs
time, not correctness (the second registration finds the first: `StoreActor.register_once`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass

import ray

from library.store import SkillStore
from pipeline.runtime import NAMESPACE, store_actor_name

PUBLISH_S = 60.0
"""A claim whose fit was not published this long after the offer belongs to a driver that
died in between."""

LOST = (ray.exceptions.ObjectLostError, ray.exceptions.TaskCancelledError,
        ray.exceptions.WorkerCrashedError)
"""What reading a waited-for fit raises when its owner is gone rather than its fit failed
(OwnerDiedError is an ObjectLostError)."""


def claim_key(items: list[str]) -> str:
    """The claim of a unit that registers `items` (its stored stage names)."""
    return "\n".join(sorted(items))


class ClaimTable:
    """key -> (holder token, offer time, [fit ref] once published); the actor's state."""

    def __init__(self):
        self._claims: dict[str, tuple[str, float, list | None]] = {}

    def offer(self, key: str, token: str) -> tuple[bool, str, list | None]:
        """(granted, holder, [ref] or None): granted when nobody holds `key` (or a holder
        never published its fit within PUBLISH_S); else the holder's token and its fit."""
        held = self._claims.get(key)
        if held is None or held[0] == token or \
                (held[2] is None and time.time() - held[1] > PUBLISH_S):
            self._claims[key] = (token, time.time(), None)
            return True, token, None
        return False, held[0], held[2]

    def publish(self, key: str, token: str, box: list) -> None:
        held = self._claims.get(key)
        if held is not None and held[0] == token:
            self._claims[key] = (token, held[1], box)

    def release(self, key: str, token: str) -> None:
        """Drop `key` if `token` still holds it."""
        held = self._claims.get(key)
        if held is not None and held[0] == token:
            del self._claims[key]

    def held(self) -> dict[str, str]:
        """key -> holder token (for tests and inspection)."""
        return {key: held[0] for key, held in self._claims.items()}


FitClaims = ray.remote(num_cpus=0, max_concurrency=1, max_restarts=-1,
                       max_task_retries=-1)(ClaimTable)
"""The claims of one store as an actor: one call at a time; restarted empty if its process
is lost."""


def claims_actor(store_uri: str) -> ray.actor.ActorHandle:
    """Get or create the claims actor of the store at `store_uri` (needs a connected Ray)."""
    absolute = SkillStore(store_uri).uri
    return FitClaims.options(name=store_actor_name("fit-claims", absolute),
                             namespace=NAMESPACE, lifetime="detached",
                             get_if_exists=True).remote()


@dataclass
class Offer:
    """What a driver's offer of one unit came to."""

    granted: bool
    """This driver holds the claim: it launches the fit and publishes it."""
    holder: str
    """The holding driver's token."""
    fit: ray.ObjectRef | None
    """The holder's fit, when another driver holds the claim and has published it."""


class DriverClaims:
    """One driver's side: its token, the claims it holds, its offers."""

    def __init__(self, store_uri: str):
        self.actor = claims_actor(store_uri)
        self.token = uuid.uuid4().hex
        self.owned: set[str] = set()

    def offer(self, key: str) -> Offer:
        try:
            granted, holder, box = ray.get(self.actor.offer.remote(key, self.token))
        except ray.exceptions.RayActorError:  # no claims to be had: fit it, as before claims
            return Offer(True, self.token, None)
        if granted:
            self.owned.add(key)
        return Offer(granted, holder, box[0] if box else None)

    def publish(self, key: str, fit: ray.ObjectRef) -> None:
        with contextlib.suppress(ray.exceptions.RayActorError):
            ray.get(self.actor.publish.remote(key, self.token, [fit]))

    def release(self, key: str, holder: str | None = None) -> None:
        """Release this driver's claim on `key` (or, as a waiter whose holder is gone, the
        claim `holder` holds)."""
        with contextlib.suppress(ray.exceptions.RayActorError):
            ray.get(self.actor.release.remote(key, holder or self.token))
        if holder is None:
            self.owned.discard(key)

    def release_all(self) -> None:
        """At the driver's end, whatever ended it: waiters then see cancelled fits and
        offer again."""
        for key in list(self.owned):
            self.release(key)
