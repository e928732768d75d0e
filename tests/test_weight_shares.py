"""scripts/weight_shares.py: a weighting's shares of the total weight by group of states."""

import numpy as np
import pytest
from script_modules import load_script

weight_shares = load_script("weight_shares")


def test_each_group_gets_its_share_of_the_weight_its_feasible_share_and_mean_weight():
    weights = np.array([1.0, 3.0, 0.0, 4.0])
    feasible = np.array([True, False, False, True])
    masks = {"a": np.array([True, True, False, False]), "b": np.array([False, False, True, True]),
             "none": np.zeros(4, bool)}
    rows = weight_shares.share_rows(weights, feasible, masks)
    assert [(label, n) for label, n, *_ in rows] == [("a", 2), ("b", 2), ("none", 0)]
    assert rows[0][2:] == pytest.approx((0.5, 0.5, 2.0))
    assert rows[1][2:] == pytest.approx((0.5, 0.5, 2.0))
    assert np.isnan(rows[2][2]) and rows[2][3] == 0.0 and np.isnan(rows[2][4])


def test_the_effective_sample_size_is_one_for_uniform_weights_and_falls_as_they_concentrate():
    assert weight_shares.effective_share(np.ones(8)) == pytest.approx(1.0)
    assert weight_shares.effective_share(np.array([1.0, 0, 0, 0])) == pytest.approx(0.25)
