"""Bad data files are refused at `psec data import` in one line naming the file and the
field, with exit status 2 and the store unchanged (issue 22, "bad data, not just bad
specs"). Each case is a well-formed walker file with one defect."""

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_builders import snapshot

from library.store import SkillStore
from pipeline.cli import main
from tasks.dataset import to_table

N, OBS, ACT = 60, 24, 6  # dm_control walker's widths


def arrays(obs_dim=OBS):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(N, obs_dim)).astype(np.float32)
    return dict(obs=obs, actions=rng.uniform(-1, 1, (N, ACT)).astype(np.float32),
                rewards=rng.normal(size=N).astype(np.float32), next_obs=obs.copy(),
                terminals=np.zeros(N, bool), timeouts=np.arange(N) % 20 == 19)


def parquet_file(path, defect):
    """A canonical walker table with `defect` (None: none) written to `path`. Defects that
    `to_table` itself refuses are put into the finished table's columns."""
    table = to_table(arrays(obs_dim=OBS + 1 if defect == "obs_width" else OBS),
                     {"suite": "dmc", "env": "walker-walk"})

    def replace(key, values):
        index = table.schema.get_field_index(key)
        return table.set_column(index, key, values)

    if defect in ("nan_obs", "action_range"):
        key, width, row = ("obs", OBS, 5) if defect == "nan_obs" else ("actions", ACT, 7)
        values = arrays()[key]
        values[row, 0] = np.nan if defect == "nan_obs" else 3.0
        table = replace(key, pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), width))
    if defect == "empty":
        table = table.slice(0, 0)
    if defect == "open_episode":
        table = table.slice(0, N - 5)  # the last episode stops without a flag
    if defect == "string_rewards":
        table = replace("rewards", pa.array([str(i) for i in range(N)]))
    pq.write_table(table, path)


def hdf5_file(path, defect):
    """A D4RL / DSRL layout walker file with `defect`."""
    data = arrays()
    keys = {"observations": data["obs"], "actions": data["actions"], "rewards": data["rewards"],
            "terminals": data["terminals"], "timeouts": data["timeouts"],
            "next_observations": data["next_obs"], "costs": np.zeros(N, np.float32)}
    if defect == "no_costs":
        del keys["costs"]
    if defect == "short_rewards":
        keys["rewards"] = keys["rewards"][:50]
    if defect == "inf_reward":
        keys["rewards"][3] = np.inf
    if defect == "obs_rank":
        keys["observations"] = keys["observations"].reshape(N, 4, 6)
    with h5py.File(path, "w") as f:
        for key, value in keys.items():
            f[key] = value


CASES = [  # (format, defect, what the message must name besides the file)
    ("parquet", "nan_obs", "column obs has a non-finite value"),
    ("parquet", "action_range", "actions must lie in [-1, 1]"),
    ("parquet", "empty", "no transitions"),
    ("parquet", "open_episode", "neither terminals nor timeouts"),
    ("parquet", "string_rewards", "column rewards must hold numbers"),
    ("parquet", "obs_width", "column obs has width 25, but dmc walker-walk has 24"),
    ("dsrl", "no_costs", "missing key(s) costs"),
    ("d4rl", "short_rewards", "rewards has 50 rows"),
    ("d4rl", "inf_reward", "column rewards has a non-finite value"),
    ("d4rl", "obs_rank", "column obs must be [N, dim]"),
]


@pytest.mark.parametrize(("fmt", "defect", "needle"), CASES, ids=[c[1] for c in CASES])
def test_a_bad_file_is_refused_in_one_line_and_the_store_is_untouched(tmp_path, capsys, fmt, defect,
                                                                         needle):
    store = SkillStore(str(tmp_path / "store"))
    store.put_dataset("kept", to_table(arrays(), {"suite": "dmc", "env": "walker-walk"}))
    before = snapshot(store.local_path)
    path = tmp_path / f"{defect}.{'parquet' if fmt == 'parquet' else 'hdf5'}"
    (parquet_file if fmt == "parquet" else hdf5_file)(path, defect)

    code = main(["data", "import", fmt, str(path), "--name", "new", "--store", store.uri,
                 "--suite", "dmc", "--env", "walker-walk"])
    err = capsys.readouterr().err.strip()

    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("psec: error: "), err
    assert str(path) in err and needle in err, err
    assert snapshot(store.local_path) == before
    assert not store.has_dataset("new")


def test_the_same_file_without_its_defect_imports(tmp_path, capsys):
    store = SkillStore(str(tmp_path / "store"))
    parquet_file(tmp_path / "good.parquet", defect=None)
    hdf5_file(tmp_path / "good.hdf5", defect=None)
    for fmt, path in (("parquet", "good.parquet"), ("dsrl", "good.hdf5"), ("d4rl", "good.hdf5")):
        assert main(["data", "import", fmt, str(tmp_path / path), "--name", f"ok-{fmt}",
                     "--store", store.uri, "--suite", "dmc", "--env", "walker-walk"]) == 0
    assert store.get_dataset("ok-parquet").num_rows == N
