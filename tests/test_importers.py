"""Importers read D4RL / DSRL HDF5 (written here in the real layouts), Minari and Parquet."""

import h5py
import numpy as np
import pytest

from library.errors import DataError
from tasks.dataset import dataset_meta, fingerprint, to_arrays, to_table, write_dataset
from tasks.importers import import_d4rl, import_dataset, import_dsrl, import_parquet

S, A = 3, 2


def _episodes():
    """obs rows of 3 episodes: 4 steps ending terminal, 5 steps ending by timeout, then
    3 steps cut off by the end of the file (neither flag). obs[i] = [i, i, i] for tracing."""
    n = 12
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    terminals[3] = True
    timeouts[8] = True
    obs = np.repeat(np.arange(n, dtype=np.float32)[:, None], S, axis=1)
    return obs, terminals, timeouts


def _write_h5(path, fields):
    """An HDF5 file of `fields` (a None value leaves that field out)."""
    with h5py.File(path, "w") as handle:
        for key, value in fields.items():
            if value is not None:
                handle[key] = value
    return path


def _write_d4rl(path, next_observations=False, **override):
    """A file in D4RL's gym-mujoco layout (plus its infos/ and metadata/ groups)."""
    obs, terminals, timeouts = _episodes()
    n = len(obs)
    fields = {
        "observations": obs,
        "actions": np.linspace(-1, 1, n * A, dtype=np.float32).reshape(n, A),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": np.zeros((n, S + 1)),
        "infos/action_log_probs": np.zeros(n, np.float32),
        "metadata/algorithm": np.bytes_("SAC"),
    }
    if next_observations:
        fields["next_observations"] = obs + 0.5
    return _write_h5(path, {**fields, **override})


def _write_dsrl(path, **override):
    obs, terminals, timeouts = _episodes()
    n = len(obs)
    terminals[-1] = False
    timeouts[-1] = True
    fields = {
        "observations": obs,
        "next_observations": obs + 0.5,
        "actions": np.zeros((n, A), np.float32),
        "rewards": np.ones(n, np.float32),
        "costs": (np.arange(n) % 2).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
    }
    return _write_h5(path, {**fields, **override})


def test_d4rl_rebuilds_next_observations_inside_episodes(tmp_path):
    table = import_d4rl(_write_d4rl(tmp_path / "hopper-medium-v2.hdf5"), env="Hopper-v5")
    arrays = to_arrays(table)
    # kept rows: 0..3 (terminal), 4..7 (row 8 is the timeout: dropped), 9..10 (row 11 is the
    # file's last row and not terminal: dropped)
    assert arrays["obs"][:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10]
    assert arrays["next_obs"][:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 10, 11]
    assert arrays["terminals"].tolist() == [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert arrays["timeouts"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 0, 1]
    assert arrays["episode"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert arrays["rewards"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 10]
    assert "costs" not in arrays
    meta = dataset_meta(table)
    assert meta["source"] == "import" and meta["generator"] == "d4rl"
    assert meta["path"] == "hopper-medium-v2.hdf5" and meta["env"] == "Hopper-v5"
    assert meta["obs_dim"] == S and meta["act_dim"] == A


def test_d4rl_with_next_observations_keeps_every_row(tmp_path):
    arrays = to_arrays(import_d4rl(_write_d4rl(tmp_path / "d.hdf5", next_observations=True)))
    assert len(arrays["obs"]) == 12
    np.testing.assert_array_equal(arrays["next_obs"], arrays["obs"] + 0.5)
    assert arrays["timeouts"].tolist() == [0] * 8 + [1, 0, 0, 1]  # file end closes episode 2


def test_d4rl_terminal_last_row_is_kept(tmp_path):
    obs, terminals, timeouts = _episodes()
    terminals[-1] = True
    path = _write_d4rl(tmp_path / "d.hdf5", terminals=terminals)
    arrays = to_arrays(import_d4rl(path))
    assert arrays["obs"][-1, 0] == 11 and arrays["terminals"][-1]
    np.testing.assert_array_equal(arrays["next_obs"][-1], arrays["obs"][-1])


def test_dsrl_is_taken_as_is(tmp_path):
    table = import_dataset("dsrl", _write_dsrl(tmp_path / "SafetyBallRun-v0-80-940.hdf5"))
    arrays = to_arrays(table)
    assert len(arrays["obs"]) == 12
    assert arrays["costs"].tolist() == [0, 1] * 6
    np.testing.assert_array_equal(arrays["next_obs"], arrays["obs"] + 0.5)
    assert arrays["episode"].tolist() == [0] * 4 + [1] * 5 + [2] * 3
    assert dataset_meta(table)["generator"] == "dsrl"


BROKEN_D4RL = [
    ({"timeouts": None}, "missing key(s) timeouts"),
    ({"rewards": np.zeros(11, np.float32)}, "rewards has 11 rows, observations has 12"),
    ({"actions": np.full((12, A), np.nan, np.float32)}, "non-finite"),
    ({"rewards": np.zeros((12, 2), np.float32)}, "rewards must have shape [N] or [N, 1]"),
    ({"actions": np.full((12, A), 3.0, np.float32)}, "actions must lie in [-1, 1]"),
]


@pytest.mark.parametrize(("override", "message"), BROKEN_D4RL, ids=[b[1] for b in BROKEN_D4RL])
def test_inconsistent_d4rl_files_are_data_errors(tmp_path, override, message):
    path = _write_d4rl(tmp_path / "bad.hdf5", **override)
    with pytest.raises(DataError) as caught:
        import_d4rl(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


BROKEN_DSRL = [
    ({"costs": None}, "missing key(s) costs"),
    ({"next_observations": np.zeros((12, S + 1), np.float32)}, "next_obs has dim 4"),
    ({"costs": np.zeros(13, np.float32)}, "costs has 13 rows"),
]


@pytest.mark.parametrize(("override", "message"), BROKEN_DSRL, ids=[b[1] for b in BROKEN_DSRL])
def test_inconsistent_dsrl_files_are_data_errors(tmp_path, override, message):
    path = _write_dsrl(tmp_path / "bad.hdf5", **override)
    with pytest.raises(DataError) as caught:
        import_dsrl(path)
    assert message in str(caught.value)


def test_truncated_and_foreign_files_are_data_errors(tmp_path):
    whole = _write_d4rl(
        tmp_path / "whole.hdf5", observations=np.zeros((4000, S), np.float32), rewards=None
    )
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read .*truncated.hdf5 as HDF5"):
        import_d4rl(truncated)
    text = tmp_path / "notes.hdf5"
    text.write_text("these are not the droids")
    with pytest.raises(DataError, match="as HDF5: .*signature"):
        import_dsrl(text)
    with pytest.raises(DataError, match="no such file"):
        import_d4rl(tmp_path / "absent.hdf5")
    group = tmp_path / "group.hdf5"
    _write_d4rl(group, timeouts=None)
    with h5py.File(group, "a") as handle:
        handle.create_group("timeouts")
    with pytest.raises(DataError, match="timeouts is a group"):
        import_d4rl(group)


def test_parquet_import_validates_and_fills_metadata(tmp_path):
    obs, terminals, timeouts = _episodes()
    terminals[-1] = True
    arrays = {
        "obs": obs,
        "actions": np.zeros((12, A)),
        "rewards": np.ones(12),
        "next_obs": obs,
        "terminals": terminals,
        "timeouts": timeouts,
    }
    table = to_table(arrays, {"source": "generate"})
    write_dataset(table, tmp_path / "x.parquet")
    back = import_parquet(tmp_path / "x.parquet", suite="mujoco", env="Hopper-v5")
    assert dataset_meta(back)["suite"] == "mujoco" and dataset_meta(back)["env"] == "Hopper-v5"
    assert fingerprint(import_dataset("parquet", tmp_path / "x.parquet")) == fingerprint(table)


def test_unknown_format():
    with pytest.raises(DataError, match=r"unknown dataset format 'csv'; known: d4rl, dsrl"):
        import_dataset("csv", "x.csv")


def test_minari_without_the_package_is_a_data_error():
    try:
        import minari  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="needs the minari package"):
            import_dataset("minari", "mujoco/hopper/medium-v0")
    else:
        pytest.skip("minari is installed: covered by test_minari_round_trip")


def test_minari_round_trip(tmp_path, monkeypatch):
    """A dataset written by Minari's own storage code (no jax needed: the episode buffers are
    built from arrays rather than step by step) imports with actions rescaled to [-1, 1]."""
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector.episode_buffer import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    obs_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)  # Pendulum's torque range
    rng = np.random.default_rng(0)
    buffers = []
    for episode, (length, terminated) in enumerate([(5, False), (4, True)]):
        terminations = [False] * length
        terminations[-1] = terminated
        buffers.append(EpisodeBuffer(
            id=episode, seed=episode,
            observations=rng.normal(size=(length + 1, 3)).astype(np.float32),
            actions=rng.uniform(-2, 2, size=(length, 1)).astype(np.float32),
            rewards=list(rng.normal(size=length)),
            terminations=terminations,
            truncations=[False] * (length - 1) + [not terminated],
            infos={},
        ))
    minari.create_dataset_from_buffers(
        "test/pendulum/tiny-v0", buffers, observation_space=obs_space, action_space=act_space,
        algorithm_name="random", description="psec importer test",
    )
    arrays = to_arrays(import_dataset("minari", "test/pendulum/tiny-v0"))
    assert arrays["obs"].shape == (9, 3) and arrays["actions"].shape == (9, 1)
    np.testing.assert_allclose(arrays["actions"], np.concatenate([b.actions for b in buffers]) / 2.0,
                               rtol=1e-6)
    np.testing.assert_array_equal(arrays["next_obs"][:5], buffers[0].observations[1:])
    assert arrays["timeouts"].tolist() == [False] * 4 + [True] + [False] * 4
    assert arrays["terminals"].tolist() == [False] * 8 + [True]
