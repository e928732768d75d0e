"""OfflineData: validated conversion from arrays and uniform sampling."""

import numpy as np
import pytest
import torch

from library.data import OfflineData
from library.errors import DataError, ShapeError, SpecError


def arrays(n: int = 10, obs_dim: int = 4, act_dim: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "obs": rng.normal(size=(n, obs_dim)),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)),
        "rewards": rng.normal(size=n),
        "next_obs": rng.normal(size=(n, obs_dim)),
        "terminals": np.zeros(n, dtype=bool),
        "timeouts": np.arange(n) % 5 == 4,
        "episode": np.arange(n) // 5,
    }


def test_from_arrays_types_and_defaults():
    data = OfflineData.from_arrays(**arrays())
    assert len(data) == 10 and data.obs_dim == 4 and data.act_dim == 2
    assert data.obs.dtype == torch.float32 and data.terminals.dtype == torch.bool
    assert data.episode.dtype == torch.int64 and torch.equal(data.costs, torch.zeros(10))


def test_sample_is_uniform_with_replacement_and_reproducible():
    data = OfflineData.from_arrays(**arrays())
    a = data.sample(1000, torch.Generator().manual_seed(0))
    b = data.sample(1000, torch.Generator().manual_seed(0))
    assert set(a) == {"obs", "actions", "rewards", "costs", "next_obs", "terminals", "timeouts",
                      "episode", "index"}
    assert all(torch.equal(a[k], b[k]) for k in a) and a["obs"].shape == (1000, 4)
    # Each of the 10 rows is drawn about 100 times; "index" names the row drawn.
    rows = (a["obs"][:, None, :] == data.obs[None]).all(-1).float().argmax(1)
    assert torch.equal(rows, a["index"])
    counts = torch.bincount(rows, minlength=10)
    assert counts.min() > 60 and counts.max() < 140
    with pytest.raises(SpecError, match="batch_size"):
        data.sample(0)


def test_data_moved_to_a_device_sample_the_same_rows():
    """What a fit on a GPU keeps resident: every field moved, the same draw per seed
    ("meta" stands in for a device here: shapes and dtypes without storage)."""
    data = OfflineData.from_arrays(**arrays())
    same = data.to("cpu")
    a, b = (d.sample(64, torch.Generator().manual_seed(3)) for d in (data, same))
    assert all(torch.equal(a[k], b[k]) for k in a)
    moved = data.to("meta")
    assert all(getattr(moved, k).device.type == "meta" and getattr(moved, k).dtype == v.dtype
               for k, v in a.items() if k != "index")
    assert len(moved) == 10 and moved.obs_dim == 4


def test_bad_arrays_are_refused_with_one_line():
    bad = arrays()
    bad["obs"][3, 1] = np.nan
    with pytest.raises(DataError, match="obs has 1 non-finite"):
        OfflineData.from_arrays(**bad)
    bad = arrays()
    bad["rewards"] = bad["rewards"][:9]
    with pytest.raises(ShapeError, match="rewards has 9 rows, obs has 10"):
        OfflineData.from_arrays(**bad)
    bad = arrays()
    bad["actions"] = bad["actions"][:, 0]
    with pytest.raises(ShapeError, match=r"actions must be \[N, dim\]"):
        OfflineData.from_arrays(**bad)
    bad = arrays()
    bad["next_obs"] = bad["next_obs"][:, :3]
    with pytest.raises(ShapeError, match="next_obs has 3 dims"):
        OfflineData.from_arrays(**bad)
    with pytest.raises(DataError, match="no transitions"):
        OfflineData.from_arrays(**arrays(n=0))
