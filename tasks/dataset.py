"""The canonical offline dataset: one Parquet table, one row per transition.

Columns (N rows, S = obs_dim, A = act_dim):

    obs        fixed_size_list<float32>[S]   state before the action
    actions    fixed_size_list<float32>[A]   action in [-1, 1] (the env's actions rescaled)
    rewards    float32
    costs      float32                       optional: only safety datasets have it
    next_obs   fixed_size_list<float32>[S]   state after the action
    terminals  bool                          the MDP ended here (no bootstrapping)
    timeouts   bool                          the episode was cut here (bootstrapping allowed)
    episode    int64                         episode id; an episode's rows are contiguous

Metadata lives in the Parquet schema metadata, one key per field, values JSON-encoded:
`suite`, `env`, `obs_dim`, `act_dim`, `source`, `generator`, `seed` always (null where
unknown), plus any extra keys a producer adds (e.g. `policy`, `path`).

Every table that enters psec goes through `to_table`, which checks shapes, finiteness,
the action range and episode structure, and raises `DataError` (one line) otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from library.errors import DataError

VECTOR_COLUMNS = ("obs", "actions", "next_obs")
FLOAT_COLUMNS = ("rewards", "costs")
FLAG_COLUMNS = ("terminals", "timeouts")
COLUMNS = ("obs", "actions", "rewards", "costs", "next_obs", "terminals", "timeouts", "episode")
REQUIRED = ("obs", "actions", "rewards", "next_obs", "terminals", "timeouts")
META_KEYS = ("suite", "env", "obs_dim", "act_dim", "source", "generator", "seed")

# Actions a hair outside [-1, 1] (float round-off in someone else's rescaling) are clipped;
# anything further out means the data was not rescaled and would silently break the policy.
ACTION_TOLERANCE = 1e-3

# Schema metadata written by pyarrow/pandas themselves, not ours.
_FOREIGN_META = (b"ARROW:", b"pandas", b"huggingface")


def _episode_ids(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """episode [N]: a new episode starts after every terminal or timeout."""
    ends = np.logical_or(terminals, timeouts)
    starts = np.concatenate([[0], ends[:-1].astype(np.int64)])
    return np.cumsum(starts).astype(np.int64)


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Validated, canonically typed copies of `arrays`; DataError naming the first problem."""
    unknown = sorted(set(arrays) - set(COLUMNS))
    if unknown:
        raise DataError(
            f"unknown dataset column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}"
        )
    missing = [key for key in REQUIRED if key not in arrays]
    if missing:
        raise DataError(f"dataset is missing column(s) {', '.join(missing)}")
    n = len(arrays["obs"])
    if n == 0:
        raise DataError("dataset has no transitions")
    out = {key: _column(key, np.asarray(arrays[key]), n) for key in COLUMNS if key in arrays}
    if out["next_obs"].shape[1] != out["obs"].shape[1]:
        raise DataError(
            f"next_obs has dim {out['next_obs'].shape[1]}, obs has dim {out['obs'].shape[1]}"
        )
    peak = float(np.abs(out["actions"]).max())
    if peak > 1.0 + ACTION_TOLERANCE:
        raise DataError(
            f"actions must lie in [-1, 1] (rescaled to the env's bounds); max |a| = {peak:.4g}"
        )
    out["actions"] = np.clip(out["actions"], -1.0, 1.0)
    if "episode" not in out:
        out["episode"] = _episode_ids(out["terminals"], out["timeouts"])
    _check_episodes(out)
    return out


def _column(key: str, value: np.ndarray, n: int) -> np.ndarray:
    """Column `key` of an n-row dataset in its canonical shape and dtype, all finite."""
    if len(value) != n:
        raise DataError(f"column {key} has {len(value)} rows, obs has {n}")
    if key in VECTOR_COLUMNS:
        if value.ndim != 2 or value.shape[1] < 1:
            raise DataError(f"column {key} must be [N, dim], got shape {list(value.shape)}")
        value = value.astype(np.float32)
    elif key in FLOAT_COLUMNS:
        value = value.reshape(n, -1) if value.ndim == 2 else value
        if value.ndim != 1 and value.shape[1:] != (1,):
            raise DataError(f"column {key} must be [N], got shape {list(value.shape)}")
        value = value.reshape(n).astype(np.float32)
    elif key in FLAG_COLUMNS:
        value = value.reshape(n) if value.ndim == 2 and value.shape[1] == 1 else value
        if value.ndim != 1:
            raise DataError(f"column {key} must be [N], got shape {list(value.shape)}")
        if value.dtype != np.bool_ and not np.isin(value, (0, 1)).all():
            raise DataError(f"column {key} must hold only 0/1 or booleans")
        value = value.astype(np.bool_)
    else:  # episode
        if value.ndim != 1 or not np.issubdtype(value.dtype, np.integer):
            raise DataError(
                f"column episode must be [N] integers, got {value.dtype} {list(value.shape)}"
            )
        value = value.astype(np.int64)
    if value.dtype == np.float32 and not np.isfinite(value).all():
        bad = int(np.argwhere(~np.isfinite(value.reshape(n, -1)))[0, 0])
        raise DataError(f"column {key} has a non-finite value (NaN or inf) at row {bad}")
    return value


def _check_episodes(out: Mapping[str, np.ndarray]) -> None:
    """Episodes are contiguous runs of rows, each ending (only) on its last row."""
    episode = out["episode"]
    if np.any(np.diff(episode) < 0):
        row = int(np.argmax(np.diff(episode) < 0)) + 1
        raise DataError(
            f"episode ids must not decrease (rows of an episode are contiguous); row {row}"
        )
    last_of_episode = np.append(episode[1:] != episode[:-1], True)
    for key in FLAG_COLUMNS:
        stray = out[key] & ~last_of_episode
        if stray.any():
            row = int(np.argmax(stray))
            raise DataError(f"{key} is set at row {row}, which is not the last row of its episode")
    open_end = last_of_episode & ~(out["terminals"] | out["timeouts"])
    if open_end.any():
        row = int(np.argmax(open_end))
        raise DataError(f"the episode ending at row {row} has neither terminals nor timeouts set "
                        "there (an episode cut short needs timeouts on its last row)")


def _encode_meta(meta: Mapping[str, Any]) -> dict[bytes, bytes]:
    encoded = {}
    for key, value in meta.items():
        try:
            encoded[key.encode()] = json.dumps(value).encode()
        except TypeError as error:
            raise DataError(f"dataset metadata {key!r} is not JSON-serialisable: {error}") from None
    return encoded


def to_table(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> pa.Table:
    """The canonical table of `arrays` (see the module doc) with `meta` in the schema.

    `episode` may be omitted: it is then numbered from the terminal/timeout boundaries.
    `obs_dim` / `act_dim` are filled in from the arrays (and checked if `meta` gives them).
    """
    checked = _check_arrays(arrays)
    meta = {key: None for key in META_KEYS} | dict(meta or {})
    for key, column in (("obs_dim", "obs"), ("act_dim", "actions")):
        actual = int(checked[column].shape[1])
        if meta[key] is not None and meta[key] != actual:
            raise DataError(f"metadata {key}={meta[key]} but column {column} has dim {actual}")
        meta[key] = actual
    fields, columns = [], []
    for key in COLUMNS:
        if key not in checked:
            continue
        value = checked[key]
        if key in VECTOR_COLUMNS:
            column = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), value.shape[1])
        else:
            column = pa.array(value)
        fields.append(pa.field(key, column.type, nullable=False))
        columns.append(column)
    schema = pa.schema(fields, metadata=_encode_meta(meta))
    return pa.Table.from_arrays(columns, schema=schema)


def dataset_meta(table: pa.Table | pa.Schema) -> dict[str, Any]:
    """The psec metadata of a canonical table, or of its schema alone (JSON-decoded)."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    meta = {}
    for key, value in (schema.metadata or {}).items():
        if key.startswith(_FOREIGN_META):
            continue
        try:
            meta[key.decode()] = json.loads(value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DataError(f"dataset metadata {key!r} is not JSON") from None
    return meta


def _check_type(key: str, kind: pa.DataType) -> None:
    """DataError unless column `key` has an Arrow type its values can be read as: numbers
    (in fixed-size lists for obs/actions/next_obs), flags as booleans or integers, episode
    ids as integers. Strings that happen to parse as numbers are refused, not converted."""
    if key in VECTOR_COLUMNS and not pa.types.is_fixed_size_list(kind):
        raise DataError(f"column {key} must be a fixed-size list, got {kind}")
    if key == "episode":
        allowed, what = pa.types.is_integer(kind), "integers"
    elif key in FLAG_COLUMNS:
        allowed = pa.types.is_boolean(kind) or pa.types.is_integer(kind)
        what = "booleans or 0/1 integers"
    else:
        if key in VECTOR_COLUMNS:
            kind = kind.value_type
        allowed = pa.types.is_floating(kind) or pa.types.is_integer(kind)
        what = "a fixed-size list of numbers" if key in VECTOR_COLUMNS else "numbers"
    if not allowed:
        raise DataError(f"column {key} must hold {what}, got {kind}")


def to_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """Column name -> writable numpy array ([N, dim] float32 for obs/actions/next_obs)."""
    missing = [key for key in REQUIRED if key not in table.column_names]
    if missing:
        raise DataError(f"dataset is missing column(s) {', '.join(missing)}")
    arrays = {}
    for key in COLUMNS:
        if key not in table.column_names:
            continue
        column = table.column(key).combine_chunks()
        _check_type(key, column.type)
        if key in VECTOR_COLUMNS:
            # flatten() honours slicing offsets, unlike .values
            flat = column.flatten().to_numpy(zero_copy_only=False)
            # A writable copy: zero-copy views of Arrow buffers are read-only.
            arrays[key] = np.array(flat.reshape(len(column), column.type.list_size))
        else:
            if column.null_count:
                raise DataError(f"column {key} has {column.null_count} missing value(s)")
            arrays[key] = np.array(column.to_numpy(zero_copy_only=False))
    return arrays


def validate(table: pa.Table) -> pa.Table:
    """`table` re-built through `to_table`: canonical types, every check applied."""
    return to_table(to_arrays(table), dataset_meta(table))


def to_offline_data(table: pa.Table):
    """The table as `library.data.OfflineData` (tensors), ready for training."""
    from library.data import OfflineData  # library-core; imported late to keep tasks light

    arrays = to_arrays(table)
    if "costs" not in arrays:
        arrays["costs"] = np.zeros(len(arrays["obs"]), dtype=np.float32)
    return OfflineData.from_arrays(**arrays)


def fingerprint(table: pa.Table) -> str:
    """sha256 of the columns' values and the metadata; equal for equal data, whatever the
    chunking, file round trips or column order."""
    digest = hashlib.sha256()
    arrays = to_arrays(table)
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    digest.update(json.dumps(dataset_meta(table), sort_keys=True).encode())
    return digest.hexdigest()


def _filesystem(path: str | os.PathLike) -> tuple[pafs.FileSystem | None, str]:
    path = os.fspath(path)
    if "://" in path:
        try:
            return pafs.FileSystem.from_uri(path)
        except (pa.ArrowInvalid, ValueError) as error:
            raise DataError(f"cannot open {path}: {error}") from None
    return None, path


def read_dataset(path: str | os.PathLike) -> pa.Table:
    """Read and validate a canonical Parquet file (local path or pyarrow filesystem URI)."""
    filesystem, where = _filesystem(path)
    try:
        table = pq.read_table(where, filesystem=filesystem)
    except FileNotFoundError:
        raise DataError(f"no such dataset file: {path}") from None
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"cannot read {path} as Parquet: {str(error).splitlines()[0]}") from None
    if table.num_columns == 0:  # pyarrow reads a folder without Parquet files as no columns
        raise DataError(f"{path} holds no Parquet data")
    try:
        return validate(table)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None


def write_dataset(table: pa.Table, path: str | os.PathLike) -> None:
    """Validate, then write `table` to `path`; a local file appears atomically (rename)."""
    table = validate(table)
    filesystem, where = _filesystem(path)
    if filesystem is not None:
        pq.write_table(table, where, filesystem=filesystem)
        return
    directory = os.path.dirname(os.path.abspath(where))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=".parquet.tmp", dir=directory)
    os.close(handle)
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, where)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def episodes(arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Each episode's rows, in order, as a dict of array slices (views, not copies)."""
    episode = np.asarray(arrays["episode"])
    bounds = np.flatnonzero(episode[1:] != episode[:-1]) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, len(episode)]):
        yield {key: value[start:stop] for key, value in arrays.items()}


def episode_totals(arrays: Mapping[str, np.ndarray]) -> tuple[list[int], list[float], list[float]]:
    """(episode ids, returns, total costs) of each episode in order; cost 0 without a
    costs column."""
    ids, returns, costs = [], [], []
    for episode in episodes(arrays):
        ids.append(int(episode["episode"][0]))
        returns.append(float(episode["rewards"].sum(dtype=np.float64)))
        costs.append(float(episode["costs"].sum(dtype=np.float64)) if "costs" in episode else 0.0)
    return ids, returns, costs


def _rows(table: pa.Table, mask: np.ndarray, meta_update: Mapping[str, Any]) -> pa.Table:
    arrays = {key: value[mask] for key, value in to_arrays(table).items()}
    return to_table(arrays, dataset_meta(table) | dict(meta_update))


def top_trajectories(table: pa.Table, k: int, cost_below: float | None = None) -> pa.Table:
    """The `k` episodes with the highest return, optionally only among those whose total
    cost is strictly below `cost_below` (the safe near-expert subset). Rows keep their
    order and episode ids. DataError if no episode qualifies."""
    if k < 1:
        raise DataError(f"top_trajectories needs k >= 1, got {k}")
    arrays = to_arrays(table)
    if cost_below is not None and "costs" not in arrays:
        raise DataError("cost_below needs a dataset with a costs column")
    ids, returns, costs = episode_totals(arrays)
    candidates = [i for i in range(len(ids)) if cost_below is None or costs[i] < cost_below]
    if not candidates:
        raise DataError(f"no episode has a total cost below {cost_below}")
    # Stable sort: ties keep dataset order, so the subset is deterministic.
    chosen = sorted(candidates, key=lambda i: -returns[i])[:k]
    keep = np.isin(arrays["episode"], [ids[i] for i in chosen])
    return _rows(table, keep, {"subset": {"top_k": k, "cost_below": cost_below}})


def limit_transitions(table: pa.Table, n: int) -> pa.Table:
    """The first `n` transitions; if the cut falls inside an episode its last kept row
    becomes a timeout (the transition itself is real, only the episode is shortened)."""
    if n < 1:
        raise DataError(f"max_transitions must be >= 1, got {n}")
    if n >= table.num_rows:
        return table
    arrays = {key: value[:n].copy() for key, value in to_arrays(table).items()}
    if not arrays["terminals"][-1]:
        arrays["timeouts"][-1] = True
    return to_table(arrays, dataset_meta(table) | {"max_transitions": n})


def concatenate(tables: Sequence[pa.Table], meta: Mapping[str, Any] | None = None) -> pa.Table:
    """One table holding every episode of `tables` (e.g. one per env of a multi-task base),
    episode ids renumbered 0.., metadata `meta` (default: the first table's)."""
    if not tables:
        raise DataError("concatenate needs at least one table")
    parts = [to_arrays(table) for table in tables]
    keys = set(parts[0])
    for index, part in enumerate(parts[1:], start=1):
        if set(part) != keys:
            raise DataError(f"table {index} has columns {sorted(part)}, table 0 has {sorted(keys)}")
        for key in VECTOR_COLUMNS:
            if part[key].shape[1] != parts[0][key].shape[1]:
                raise DataError(
                    f"table {index} has {key} dim {part[key].shape[1]}, table 0 has "
                    f"{parts[0][key].shape[1]}"
                )
    offset, renumbered = 0, []
    for part in parts:
        # episode ids -> 0..E-1 within the part, then shifted past the previous parts
        _, local = np.unique(part["episode"], return_inverse=True)
        renumbered.append(local + offset)
        offset += int(local.max()) + 1
    merged = {key: np.concatenate([part[key] for part in parts]) for key in keys}
    merged["episode"] = np.concatenate(renumbered)
    return to_table(merged, dict(meta) if meta is not None else dataset_meta(tables[0]))


def union(parts: Mapping[str, pa.Table], limits: Mapping[str, int | None] | None = None
          ) -> pa.Table:
    """Every episode of the named tables, in order, as one dataset: e.g. a source domain's
    data and a target domain's for joint training. `limits` cuts a part to its first N
    transitions first (`limit_transitions`; None = whole). The union keeps the last part's
    suite and env (the task it is trained for) and records each part's name, rows and
    metadata under `parts`."""
    if not parts:
        raise DataError("union needs at least one dataset")
    limits = limits or {}
    unknown = sorted(set(limits) - set(parts))
    if unknown:
        raise DataError(f"limits name dataset(s) {', '.join(unknown)} that are not parts")
    tables = {name: table if limits.get(name) is None else
              limit_transitions(table, limits[name]) for name, table in parts.items()}
    metas = {name: dataset_meta(table) for name, table in tables.items()}
    last = metas[list(tables)[-1]]
    meta = {key: None for key in META_KEYS} | {
        "suite": last.get("suite"), "env": last.get("env"), "source": "union",
        "parts": {name: {"rows": table.num_rows, "meta": metas[name]}
                  for name, table in tables.items()}}
    return concatenate(list(tables.values()), meta)
