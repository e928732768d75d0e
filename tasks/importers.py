"""Real offline-RL datasets into the canonical table (`tasks.dataset`).

* D4RL HDF5 (gym-mujoco layout): `observations`, `actions`, `rewards`, `terminals`,
  `timeouts`, optionally `next_observations` and `infos/...`, `metadata/...` (ignored).
  Without `next_observations` they are rebuilt inside episodes: an episode ends at a
  terminal or a timeout, and row i's next state is row i+1's state. Where that is not a
  state of the same episode the transition is handled like D4RL's `qlearning_dataset`:
  a timeout row is dropped (its next state is the next episode's reset) and the row
  before it becomes the episode's timeout; the file's last row is dropped unless it is
  terminal (then its next state, never bootstrapped from, is set to its own state); a
  terminal row keeps row i+1 as next state, as D4RL does (unused: no bootstrapping).
* DSRL HDF5: `observations`, `next_observations`, `actions`, `rewards`, `costs`,
  `terminals`, `timeouts`, taken as they are.
* Minari: a dataset id or path given to `minari.load_dataset`, episodes flattened,
  actions rescaled from the dataset's action space to [-1, 1]. Needs `minari` (reading only; `minari[create]` with jax is for writing)
  (`pip install -e .[minari]`).
* Parquet: a canonical file, validated.

Every importer reads and checks the whole file before returning; a missing key, a length
mismatch, a NaN, or a file that is not HDF5 raises `DataError` (one line). Nothing is
written here: callers store the returned table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from library.errors import DataError
from tasks.dataset import dataset_meta, read_dataset, to_table
from tasks.suites import get_suite

FORMATS = ("d4rl", "dsrl", "minari", "parquet")

D4RL_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
DSRL_KEYS = (
    "observations",
    "next_observations",
    "actions",
    "rewards",
    "costs",
    "terminals",
    "timeouts",
)


def _read_hdf5(path: str | os.PathLike, required: tuple[str, ...], optional: tuple[str, ...]):
    """Arrays of `required` (all must exist) and `optional` keys of an HDF5 file."""
    import h5py  # only importers need it

    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"no such file: {path}")
    if os.path.isdir(path):  # h5py's message for a folder runs over several lines
        raise DataError(f"{path} is a folder, not an HDF5 file")
    try:
        with h5py.File(path, "r") as handle:
            missing = [key for key in required if key not in handle]
            if missing:
                raise DataError(f"{path} is missing key(s) {', '.join(missing)}")
            arrays = {}
            for key in (*required, *(key for key in optional if key in handle)):
                if not isinstance(handle[key], h5py.Dataset):
                    raise DataError(f"{path}: {key} is a group, expected an array")
                arrays[key] = handle[key][()]
    except DataError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        # h5py reports "not an HDF5 file", truncation ("eof"), bad chunks, ... as OSError
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot read {path} as HDF5: {first_line}") from None
    lengths = {key: len(value) if np.ndim(value) else -1 for key, value in arrays.items()}
    expected = lengths["observations"]
    for key, length in lengths.items():
        if length != expected:
            raise DataError(f"{path}: {key} has {length} rows, observations has {expected}")
    if expected == 0:
        raise DataError(f"{path} holds no transitions")
    return arrays


def _flat(value: np.ndarray, n: int, key: str, path: str) -> np.ndarray:
    """[N] from [N] or [N, 1]."""
    if value.shape not in ((n,), (n, 1)):
        raise DataError(f"{path}: {key} must have shape [N] or [N, 1], got {list(value.shape)}")
    return value.reshape(n)


def _meta(fmt: str, path: str | os.PathLike, suite: str | None, env: str | None) -> dict:
    return {
        "suite": suite,
        "env": env,
        "source": "import",
        "generator": fmt,
        "seed": None,
        "path": os.path.basename(os.fspath(path).rstrip("/")) or os.fspath(path),
    }


def import_d4rl(
    path: str | os.PathLike, *, suite: str | None = None, env: str | None = None
) -> pa.Table:
    """A D4RL gym-mujoco HDF5 file as a canonical table (see the module doc)."""
    raw = _read_hdf5(path, D4RL_KEYS, ("next_observations",))
    where = os.fspath(path)
    n = len(raw["observations"])
    obs = raw["observations"]
    terminals = _flat(raw["terminals"], n, "terminals", where).astype(bool)
    # A row flagged both terminal and timeout ended the MDP: keep it as terminal.
    timeouts = _flat(raw["timeouts"], n, "timeouts", where).astype(bool) & ~terminals
    rewards = _flat(raw["rewards"], n, "rewards", where)
    actions = raw["actions"]
    if "next_observations" in raw:
        next_obs = raw["next_observations"]
        keep = np.ones(n, dtype=bool)
        if not (terminals[-1] or timeouts[-1]):
            timeouts = timeouts.copy()
            timeouts[-1] = True  # the file ends mid-episode; its last transition is real
    else:
        # next_obs [N, S]: row i+1's state, or (last row) its own state.
        next_obs = np.concatenate([obs[1:], obs[-1:]], axis=0)
        keep = ~timeouts
        keep[-1] = bool(terminals[-1])
        # The kept row just before a dropped one now ends its episode early.
        dropped = np.flatnonzero(~keep)
        before = dropped - 1
        before = before[(before >= 0) & keep[np.maximum(before, 0)]]
        timeouts = timeouts.copy()
        timeouts[before] = ~terminals[before]
    if not keep.any():
        raise DataError(f"{where}: no transition has a known next state")
    arrays = {
        "obs": obs[keep],
        "actions": actions[keep],
        "rewards": rewards[keep],
        "next_obs": next_obs[keep],
        "terminals": terminals[keep],
        "timeouts": timeouts[keep],
    }
    try:
        return to_table(arrays, _meta("d4rl", path, suite, env))
    except DataError as error:
        raise DataError(f"{where}: {error}") from None


def import_dsrl(
    path: str | os.PathLike, *, suite: str | None = None, env: str | None = None
) -> pa.Table:
    """A DSRL HDF5 file (with costs and next observations) as a canonical table."""
    raw = _read_hdf5(path, DSRL_KEYS, ())
    where = os.fspath(path)
    n = len(raw["observations"])
    terminals = _flat(raw["terminals"], n, "terminals", where).astype(bool)
    timeouts = _flat(raw["timeouts"], n, "timeouts", where).astype(bool) & ~terminals
    if not (terminals[-1] or timeouts[-1]):
        timeouts[-1] = True  # the file ends mid-episode; its last transition is real
    arrays = {
        "obs": raw["observations"],
        "actions": raw["actions"],
        "rewards": _flat(raw["rewards"], n, "rewards", where),
        "costs": _flat(raw["costs"], n, "costs", where),
        "next_obs": raw["next_observations"],
        "terminals": terminals,
        "timeouts": timeouts,
    }
    try:
        return to_table(arrays, _meta("dsrl", path, suite, env))
    except DataError as error:
        raise DataError(f"{where}: {error}") from None


def _flatten_observations(observations: Any, space: Any) -> np.ndarray:
    """[T+1, S] from a Minari episode's observations (an array, or a dict for Dict spaces)."""
    if isinstance(observations, Mapping):
        keys = list(space.spaces) if hasattr(space, "spaces") else sorted(observations)
        parts = [_flatten_observations(observations[key], space[key]) for key in keys]
        return np.concatenate(parts, axis=1)
    observations = np.asarray(observations)
    return observations.reshape(len(observations), -1)


def import_minari(dataset_id: str, *, suite: str | None = None, env: str | None = None) -> pa.Table:
    """A Minari dataset (id or local path known to `minari.load_dataset`) as a table."""
    try:
        import minari
    except ImportError:
        raise DataError(
            "format minari needs the minari package: pip install -e .[minari]"
        ) from None
    try:
        dataset = minari.load_dataset(dataset_id)
    except FileNotFoundError:
        # Minari's own message suggests download=True, which psec does not offer.
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise DataError(
            f"no Minari dataset {dataset_id!r} under {root}: PATH is a Minari dataset id "
            "(e.g. mujoco/hopper/medium-v0); fetch it first with `minari download <id>`"
        ) from None
    except Exception as error:  # minari raises several kinds for unknown/corrupt datasets
        raise DataError(f"cannot load Minari dataset {dataset_id!r}: {error}") from None
    space = dataset.action_space
    low = np.asarray(getattr(space, "low", -1.0), dtype=np.float64)
    high = np.asarray(getattr(space, "high", 1.0), dtype=np.float64)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise DataError(f"Minari dataset {dataset_id!r} has unbounded actions; cannot rescale")
    columns: dict[str, list[np.ndarray]] = {
        key: [] for key in ("obs", "actions", "rewards", "next_obs", "terminals", "timeouts")
    }
    for episode in dataset.iterate_episodes():
        observations = _flatten_observations(episode.observations, dataset.observation_space)
        steps = len(episode.actions)
        if len(observations) != steps + 1:
            raise DataError(
                f"Minari episode {episode.id} has {len(observations)} observations for {steps} actions"
            )
        terminals = np.asarray(episode.terminations, dtype=bool)
        timeouts = np.asarray(episode.truncations, dtype=bool) & ~terminals
        if steps and not (terminals[-1] or timeouts[-1]):
            timeouts[-1] = True  # recorded up to here only
        actions = np.asarray(episode.actions, dtype=np.float64).reshape(steps, -1)
        columns["obs"].append(observations[:-1])
        columns["next_obs"].append(observations[1:])
        columns["actions"].append(2.0 * (actions - low) / (high - low) - 1.0)
        columns["rewards"].append(np.asarray(episode.rewards, dtype=np.float64))
        columns["terminals"].append(terminals)
        columns["timeouts"].append(timeouts)
    if not columns["obs"]:
        raise DataError(f"Minari dataset {dataset_id!r} has no episodes")
    arrays = {key: np.concatenate(parts) for key, parts in columns.items()}
    meta = _meta("minari", dataset_id, suite, env) | {"path": dataset_id}
    try:
        return to_table(arrays, meta)
    except DataError as error:
        raise DataError(f"Minari dataset {dataset_id!r}: {error}") from None


def import_parquet(
    path: str | os.PathLike, *, suite: str | None = None, env: str | None = None
) -> pa.Table:
    """A canonical Parquet file, validated; `suite` / `env` fill missing metadata."""
    table = read_dataset(path)
    meta = dict(table.schema.metadata or {})
    for key, value in (("suite", suite), ("env", env)):
        if value is not None:
            meta[key.encode()] = json.dumps(value).encode()
    return table.replace_schema_metadata(meta)


IMPORTERS: dict[str, Callable[..., pa.Table]] = {
    "d4rl": import_d4rl,
    "dsrl": import_dsrl,
    "minari": import_minari,
    "parquet": import_parquet,
}


def import_dataset(
    format: str, path: str | os.PathLike, *, suite: str | None = None, env: str | None = None
) -> pa.Table:
    """Import `path` in `format` (d4rl | dsrl | minari | parquet) as a canonical table."""
    if format not in IMPORTERS:
        raise DataError(f"unknown dataset format {format!r}; known: {', '.join(FORMATS)}")
    if suite is not None:
        get_suite(suite)  # before reading a file that may be large
    table = IMPORTERS[format](path, suite=suite, env=env)
    # An --env the user gave goes into the metadata as written: check it against the suite
    # the data ends up with (given, or the file's own) so the metadata says no untruth.
    meta = dataset_meta(table)
    known_suite = meta.get("suite")
    if env is not None and known_suite is not None:
        get_suite(known_suite).check_env(env)
    if known_suite is not None and meta.get("env") is not None:
        _check_dims(meta, known_suite, meta["env"], path)
    return table


def _check_dims(meta: dict[str, Any], suite: str, env: str, path: str | os.PathLike) -> None:
    """DataError naming the file unless the widths in a dataset's metadata `meta` are the
    env's: data said to come from an env must fit the policies that act in it."""
    want = dict(zip(("obs_dim", "act_dim"), get_suite(suite).dims(env), strict=True))
    for key, width in want.items():
        if meta.get(key) is not None and int(meta[key]) != width:
            column = "obs" if key == "obs_dim" else "actions"
            raise DataError(f"{os.fspath(path)}: column {column} has width {meta[key]}, but "
                            f"{suite} {env} has {width}")
