"""scripts/hazard_neighbours.py: a cost later in an episode, and a visited state's nearest
data states."""

import numpy as np
import pytest
from script_modules import load_script

hazard_neighbours = load_script("hazard_neighbours")


def test_a_cost_is_ahead_until_its_step_and_not_across_episodes():
    costs = np.array([0, 0, 1, 0, 0, 0, 0, 2, 0], dtype=np.float32)
    episodes = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2])
    ahead = hazard_neighbours.cost_ahead(costs, episodes)
    assert ahead.tolist() == [True, True, True, False, True, True, True, True, False]


def test_rows_report_the_nearest_data_states_in_std_units():
    # Two clusters of data states: near 0 (cost ahead, V_h = 2) and near 10 (none, V_h = -1).
    data = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 10.0)]).astype(np.float32)
    data[:, 1] += np.arange(10) * 0.01  # distinct states
    ahead = np.array([True] * 5 + [False] * 5)
    data_hazard = np.array([2.0] * 5 + [-1.0] * 5)
    states = np.array([[0.0, 0.0], [1.0, 1.0], [10.0, 10.0]], dtype=np.float32)
    rows = hazard_neighbours.neighbour_rows(states, np.array([0.5, 0.6, 0.7]), data,
                                            data_hazard, ahead, every=2, k=5)
    assert [row[0] for row in rows] == [0, 2]  # every second step
    (_, h0, d0, share0, v0), (_, h2, d2, share2, v2) = rows
    assert (h0, share0, v0) == pytest.approx((0.5, 1.0, 2.0))
    assert (h2, share2, v2) == pytest.approx((0.7, 0.0, -1.0))
    assert d0 == pytest.approx(d2, abs=0.01) and d0 < 0.05  # scaled by the data's std (≈ 5)


def test_steps_to_end_count_down_within_each_episode():
    episodes = np.array([0, 0, 0, 1, 1, 2])
    assert hazard_neighbours.steps_to_end(episodes).tolist() == [2, 1, 0, 1, 0, 0]


def test_end_rows_count_only_states_with_no_cost_ahead():
    left = np.array([0, 1, 2, 3, 0, 1])
    ahead = np.array([False, False, False, False, True, True])
    hazard = np.array([1.0, -1.0, -1.0, -1.0, 5.0, 5.0])
    rows = hazard_neighbours.end_rows(hazard, ahead, left, bounds=(0, 2))
    assert rows == [("0–1", 2, 0.5), ("2–3", 2, 0.0)]
