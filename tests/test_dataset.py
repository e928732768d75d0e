"""The canonical Parquet dataset: validation, round trips, fingerprints and subsets."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from library.errors import DataError
from tasks.dataset import (
    concatenate,
    dataset_meta,
    episodes,
    fingerprint,
    limit_transitions,
    read_dataset,
    to_arrays,
    to_offline_data,
    to_table,
    top_trajectories,
    write_dataset,
)

META = {"suite": "mujoco", "env": "Hopper-v5", "source": "generate", "generator": "sac", "seed": 3}


def _arrays(n: int = 30, seed: int = 0) -> dict[str, np.ndarray]:
    """Three episodes: 0..9 ends terminal, 10..19 ends by timeout, 20..29 likewise."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[9] = True
    timeouts[19] = timeouts[n - 1] = True
    return {
        "obs": rng.normal(size=(n, 4)),
        "actions": rng.uniform(-1, 1, size=(n, 2)),
        "rewards": rng.normal(size=n),
        "costs": (rng.uniform(size=n) < 0.3).astype(np.float64),
        "next_obs": rng.normal(size=(n, 4)),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def test_schema_and_metadata():
    table = to_table(_arrays(), META)
    schema = table.schema
    assert schema.field("obs").type == pa.list_(pa.float32(), 4)
    assert schema.field("actions").type == pa.list_(pa.float32(), 2)
    assert schema.field("rewards").type == pa.float32()
    assert schema.field("terminals").type == pa.bool_()
    assert schema.field("episode").type == pa.int64()
    assert dataset_meta(table) == META | {"obs_dim": 4, "act_dim": 2}
    assert to_arrays(table)["episode"].tolist() == [0] * 10 + [1] * 10 + [2] * 10
    assert set(dataset_meta(to_table(_arrays()))) >= {"suite", "env", "seed"}  # null when unknown


def test_round_trip_keeps_fingerprint_and_metadata(tmp_path):
    table = to_table(_arrays(), META)
    path = tmp_path / "sub" / "data.parquet"
    write_dataset(table, path)
    back = read_dataset(path)
    assert fingerprint(back) == fingerprint(table)
    assert dataset_meta(back) == dataset_meta(table)
    for key, value in to_arrays(table).items():
        np.testing.assert_array_equal(to_arrays(back)[key], value)
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed away


def test_fingerprint_ignores_chunking_but_not_content():
    table = to_table(_arrays(), META)
    rechunked = pa.concat_tables([table.slice(0, 7), table.slice(7)])
    assert rechunked.column("obs").num_chunks == 2
    assert fingerprint(rechunked) == fingerprint(table)
    changed = _arrays()
    changed["rewards"][5] += 1e-3
    assert fingerprint(to_table(changed, META)) != fingerprint(table)
    assert fingerprint(to_table(_arrays(), META | {"seed": 4})) != fingerprint(table)


def test_sliced_tables_read_the_right_rows():
    table = to_table(_arrays(), META)
    arrays = to_arrays(table.slice(10, 10))
    np.testing.assert_allclose(arrays["obs"], to_arrays(table)["obs"][10:20])


def _mutate(key, value):
    def apply(arrays):
        arrays[key] = value(arrays) if callable(value) else value

    return apply


BAD = [
    (lambda a: a.pop("next_obs"), "missing column(s) next_obs"),
    (lambda a: a.update(extra=np.zeros(30)), "unknown dataset column(s) extra"),
    (_mutate("actions", lambda a: a["actions"][:-1]), "column actions has 29 rows, obs has 30"),
    (_mutate("obs", lambda a: a["obs"][:, 0]), "column obs must be [N, dim]"),
    (_mutate("next_obs", lambda a: a["next_obs"][:, :3]), "next_obs has dim 3, obs has dim 4"),
    (_mutate("rewards", lambda a: np.where(np.arange(30) == 7, np.nan, a["rewards"])), "row 7"),
    (_mutate("obs", lambda a: np.where(a["obs"] > 1.5, np.inf, a["obs"])), "non-finite"),
    (_mutate("actions", lambda a: a["actions"] * 2), "actions must lie in [-1, 1]"),
    (_mutate("terminals", lambda a: np.full(30, 2)), "0/1 or booleans"),
    (_mutate("episode", lambda a: np.r_[np.ones(15, int), np.zeros(15, int)]), "must not decrease"),
    (_mutate("episode", lambda a: np.zeros(30, np.float64)), "integers"),
    (
        lambda a: a.update(
            timeouts=np.eye(30, dtype=bool)[3] | a["timeouts"],
            episode=np.repeat([0, 1, 2], 10),
        ),
        "timeouts is set at row 3, which is not the last row of its episode",
    ),
    (lambda a: [a.__setitem__(k, v[:0]) for k, v in list(a.items())], "no transitions"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD, ids=[b[1] for b in BAD])
def test_bad_arrays_are_data_errors(mutate, message):
    arrays = _arrays()
    mutate(arrays)
    with pytest.raises(DataError) as caught:
        to_table(arrays, META)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_metadata_dims_are_checked():
    with pytest.raises(DataError, match="metadata obs_dim=5 but column obs has dim 4"):
        to_table(_arrays(), META | {"obs_dim": 5})


def test_actions_a_hair_outside_are_clipped():
    arrays = _arrays()
    arrays["actions"][0, 0] = 1.0004
    assert to_arrays(to_table(arrays))["actions"][0, 0] == 1.0


def test_bad_files_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="no such dataset file"):
        read_dataset(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read .* as Parquet"):
        read_dataset(tmp_path / "junk.parquet")
    half = to_table(_arrays(), META).drop_columns(["timeouts"])
    pq.write_table(half, tmp_path / "half.parquet")
    with pytest.raises(DataError, match="missing column"):
        read_dataset(tmp_path / "half.parquet")


def test_episodes_iterator():
    arrays = to_arrays(to_table(_arrays()))
    parts = list(episodes(arrays))
    assert [len(p["obs"]) for p in parts] == [10, 10, 10]
    assert parts[0]["terminals"][-1] and parts[1]["timeouts"][-1]
    np.testing.assert_array_equal(parts[2]["rewards"], arrays["rewards"][20:])


def test_top_trajectories_picks_best_safe_episodes():
    arrays = _arrays()
    arrays["rewards"] = np.repeat([3.0, 1.0, 2.0], 10)
    arrays["costs"] = np.repeat([5.0, 0.0, 0.0], 10) / 10  # episode costs 5, 0, 0
    table = to_table(arrays, META)
    best = to_arrays(top_trajectories(table, 1))
    assert set(best["episode"]) == {0}
    safe = top_trajectories(table, 1, cost_below=1.0)
    assert set(to_arrays(safe)["episode"]) == {2}
    assert dataset_meta(safe)["subset"] == {"top_k": 1, "cost_below": 1.0}
    both = to_arrays(top_trajectories(table, 5, cost_below=1.0))
    assert sorted(set(both["episode"])) == [1, 2]  # fewer qualify than asked: all of them
    with pytest.raises(DataError, match="no episode has a total cost below 0.0"):
        top_trajectories(table, 1, cost_below=0.0)
    no_costs = _arrays()
    del no_costs["costs"]
    with pytest.raises(DataError, match="costs column"):
        top_trajectories(to_table(no_costs), 1, cost_below=1.0)


def test_limit_transitions_marks_the_cut_as_timeout():
    table = to_table(_arrays(), META)
    cut = to_arrays(limit_transitions(table, 15))
    assert len(cut["obs"]) == 15 and cut["timeouts"][-1] and not cut["terminals"][-1]
    assert cut["episode"].tolist() == [0] * 10 + [1] * 5
    at_terminal = to_arrays(limit_transitions(table, 10))
    assert at_terminal["terminals"][-1] and not at_terminal["timeouts"][-1]
    assert limit_transitions(table, 100) is table


def test_concatenate_renumbers_episodes():
    first, second = to_table(_arrays(seed=1), META), to_table(_arrays(seed=2), META)
    both = to_arrays(concatenate([first, second], META | {"env": "many"}))
    assert both["episode"].tolist() == [e for e in range(6) for _ in range(10)]
    odd = _arrays()
    odd["obs"] = odd["next_obs"] = np.zeros((30, 5))
    with pytest.raises(DataError, match="table 1 has obs dim 5"):
        concatenate([first, to_table(odd)])


def test_to_offline_data():
    pytest.importorskip("library.data")
    data = to_offline_data(to_table(_arrays(), META))
    assert len(data) == 30 and data.obs_dim == 4 and data.act_dim == 2
