"""Re-evaluations of frozen items, replayed from the item's earlier rollout.

A continual stream rolls every earlier task's own policy out again after each new task
(Continual World's p_i(t)). In a stream of frozen skills that policy is the same stored
item every time, and an evaluation is deterministic in (item, env, eval seed, episodes):
episode i of seed s is the same whatever chunks cut around it
(pipeline.evaluation.roll_episodes). The CW10 run of stores/cw10/seed-0 rolled hammer-v3
and mw-base out again after later tasks and got bit-identical returns. So the driver
rolls such an item out once per (env, seed, episodes) and records each later
re-evaluation as a copy of that rollout's figures, the row's `replay_of` naming the row
task whose rollout it repeats. A CW10 run makes 21 rollouts of own policies and
composers instead of 76.

A stored row counts only when it belongs to the same stream and was recorded after the
item and every item it builds on (its `parent` chain) were stored, so a re-fitted item is
rolled out afresh. `psec run --no-replay` rolls every re-evaluation out.

Streams of one store share items: the trials of a search are one stream each, and every
composer trial of a training seed evaluates the same stored new skill (a dynamics-shift
PSEC trial's skill rolled out again for the second α choice, a safe-composition seed's
safety skill five times). An item's own evaluation is copied from another stream's row
too when that row names the same rollout settings (`rollout`, the digest of
`pipeline.evaluation.rollout_digest`: suite, env, dynamics, horizon, step cap and
candidates per state), env, seed and episodes, under the same rule of time. Rows from
before the digest existed are never copied across streams.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from library.manifest import ManifestEntry
from pipeline.evaluation import EvalJob, rollout_digest
from pipeline.results import summary_of

Stats = dict[str, float]
"""One seed's figures as pipeline.evaluation.summarise_job gives them (the keys a result
row is built from)."""

RolloutKey = tuple[str, str, str, int, int]
"""(item, eval task, env, eval seed, episodes)."""

SharedKey = tuple[str, str, int, int, str]
"""(item, env, eval seed, episodes, rollout digest): a rollout any stream may have made."""


def _time(iso: str) -> datetime:
    # Rows are stamped to the second, manifests to the microsecond.
    return datetime.fromisoformat(iso).replace(microsecond=0)


class Rollouts:
    """The rollouts of one stream's items, by (item, eval task, env, seed, episodes)."""

    def __init__(self) -> None:
        self._known: dict[RolloutKey, tuple[str, Stats]] = {}
        self._shared: dict[SharedKey, tuple[str, Stats]] = {}

    @classmethod
    def from_store(cls, stream: str, rows: Iterable[dict],
                   entries: Iterable[ManifestEntry]) -> Rollouts:
        """The rollouts a stream's stored rows hold of the items as they are stored now."""
        by_name = {entry.name: entry for entry in entries}

        def stored_since(name: str) -> datetime | None:
            """When the item and every item it builds on were all stored (None: one is
            missing)."""
            latest = None
            seen = set()
            while name is not None and name not in seen:
                seen.add(name)
                entry = by_name.get(name)
                if entry is None:
                    return None
                created = _time(entry.created)
                latest = created if latest is None else max(latest, created)
                name = entry.parent
            return latest

        rollouts = cls()
        for row in rows:
            if row.get("env") is None:
                continue
            since = stored_since(row["name"])
            if since is None or _time(row["time"]) < since:
                continue
            figures = summary_of(row)
            if row.get("rollout") is not None:
                shared = (row["name"], row["env"], int(row["seed"]), int(row["episodes"]),
                          row["rollout"])
                origin = row.get("replay_of") or f"{row['stream']}/{row['task']}"
                rollouts._shared.setdefault(shared, (origin, figures))
            if row.get("stream") != stream:
                continue
            key = (row["name"], row["eval_task"], row["env"], int(row["seed"]),
                   int(row["episodes"]))
            rollouts._known.setdefault(key, (row.get("replay_of") or row["task"], figures))
        return rollouts

    @staticmethod
    def _keys(job: EvalJob) -> list[RolloutKey]:
        return [(job.item, job.task.name, job.task.env, seed, job.episodes_per_seed)
                for seed in job.seeds]

    def remember(self, job: EvalJob, per_seed: dict[int, Stats]) -> None:
        """Keep a finished rollout's figures per seed."""
        for key in self._keys(job):
            if key[3] in per_seed:
                self._known.setdefault(key, (job.row_task, per_seed[key[3]]))

    def recall_shared(self, job: EvalJob) -> tuple[str, dict[int, Stats]] | None:
        """(`<stream>/<row task>` of the rollout it copies, figures per seed) when every
        seed of the job was rolled out before, by any stream of the store, with the same
        item, env, episodes and rollout settings; else None."""
        digest = rollout_digest(job.task)
        found = [self._shared.get((job.item, job.task.env, seed, job.episodes_per_seed, digest))
                 for seed in job.seeds]
        if not found or any(value is None for value in found):
            return None
        return found[0][0], {seed: stats for seed, (_, stats) in zip(job.seeds, found)}

    def recall(self, job: EvalJob) -> tuple[str, dict[int, Stats]] | None:
        """(the row task whose rollout it repeats, figures per seed) when every seed of the
        job was rolled out before with the same episodes, else None."""
        found = [self._known.get(key) for key in self._keys(job)]
        if not found or any(value is None for value in found):
            return None
        return found[0][0], {seed: stats for seed, (_, stats) in zip(job.seeds, found)}
