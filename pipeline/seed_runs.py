"""Several seeds of one stream side by side: `psec run STREAM --seed 0 1 2 --store URI`.

A store holds one seed's run (pipeline.checks), so each seed N runs into its own store,
`<URI>/seed-N`, as `psec run STREAM --seed N --store <URI>/seed-N` would: its own lease,
plan, checks and store actor. The runs share one Ray connection and start together, each
driver in a thread of this process, so on a cluster the seeds' fits and rollouts spread
over the nodes as Ray schedules them (each run sizes its fits as a run alone does; Ray
queues what does not fit). A run that fails is reported with its seed and the others go
on; running the command again resumes every seed where it stopped, as `psec run` does.
`psec report --store URI` finds the seed stores and reports across them
(pipeline/continual_seeds.py).
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.fs as pafs

from library.errors import PsecError
from library.store import SkillStore

SEED_FOLDER = re.compile(r"^seed-(\d+)$")
"""A seed's store inside the URI given: `seed-<N>`."""


def seed_store(uri: str, seed: int) -> str:
    """The URI of seed `seed`'s store under `uri`."""
    return SkillStore(uri).uri_of(f"seed-{seed}")


def seed_stores(uri: str) -> list[str]:
    """The seed stores (`seed-<N>` folders) directly under `uri`, by seed; [] when none."""
    store = SkillStore(uri)
    if store.local_path is not None:
        fs, root = pafs.LocalFileSystem(), store.local_path
    else:
        fs, root = pafs.FileSystem.from_uri(store.uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except OSError:
        return []
    seeds = sorted(int(match.group(1)) for info in infos
                   if info.type == pafs.FileType.Directory
                   and (match := SEED_FOLDER.match(info.base_name)))
    return [seed_store(uri, seed) for seed in seeds]


@dataclass
class SeedOutcome:
    seed: int
    store: str
    text: str
    """The run's summary (StreamSummary.describe()) or its one-line error."""
    failed: bool


def run_seeds(path: str, store_uri: str, seeds: list[int], scale: str | None = None,
              address: str | None = None, options=None) -> list[SeedOutcome]:
    """Run the stream once per seed, each into `seed_store(store_uri, seed)`, side by side;
    the outcomes in the order of `seeds`."""
    from pipeline.driver import DriverOptions, run_stream_file
    from pipeline.runtime import connect
    from tasks.spec import load_stream

    if len(set(seeds)) < len(seeds):
        raise PsecError(f"--seed: a seed given twice ({' '.join(map(str, seeds))})")
    load_stream(path, scale)  # a bad stream or scale fails once, before any run starts
    options = (options or DriverOptions()).model_copy(update={"progress": False})
    connect(address)  # once, here: the threads' drivers find Ray initialised
    lock = threading.Lock()

    def one(seed: int) -> SeedOutcome:
        store = seed_store(store_uri, seed)
        try:
            summary = run_stream_file(path, store, scale=scale, address=address,
                                      options=options, seed=seed)
            outcome = SeedOutcome(seed, store, summary.describe(), False)
        except PsecError as error:
            outcome = SeedOutcome(seed, store, f"psec: error: {error}", True)
        with lock:
            print(f"seed {seed}: {'failed' if outcome.failed else 'done'} ({store})",
                  flush=True)
        return outcome

    with ThreadPoolExecutor(max_workers=len(seeds), thread_name_prefix="psec-seed") as pool:
        return list(pool.map(one, seeds))
