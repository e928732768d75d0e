"""scripts/alpha_near_hazards.py: data states grouped by the next cost of their episode,
and α(s) compared inside each quarter of the episode."""

import numpy as np
import pytest
from script_modules import load_script

alpha_near_hazards = load_script("alpha_near_hazards")


def test_steps_to_cost_count_down_to_the_next_cost_of_the_same_episode():
    costs = np.array([0, 0, 1, 0, 1, 0, 0, 0, 2], dtype=np.float32)
    episodes = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1])
    # Episode 0: costs at its steps 2 and 4, none after step 4; episode 1: at its step 2.
    assert alpha_near_hazards.steps_to_cost(costs, episodes).tolist() == [2, 1, 0, 1, 0, -1,
                                                                          2, 1, 0]


def test_groups_split_every_state_into_one_band():
    to_cost = np.array([0, 1, 10, 11, 100, 101, 5000, -1])
    masks = alpha_near_hazards.groups(to_cost)
    assert list(masks) == ["at a cost", "1–10 before", "11–100 before", "> 100 before",
                           "no cost ahead"]
    assert [int(np.flatnonzero(mask).sum()) for mask in masks.values()] == [0, 1 + 2, 3 + 4,
                                                                          5 + 6, 7]
    assert sum(mask.astype(int) for mask in masks.values()).tolist() == [1] * len(to_cost)


def test_quarters_compare_costly_and_safe_states_at_the_same_time_of_the_episode():
    # Two episodes of 8 steps; the safety weight falls with the step, and is 0.5 lower at
    # a cost: over all states the cost groups would mix both effects, per quarter only the
    # cost's remains.
    episodes = np.repeat([0, 1], 8)
    position = alpha_near_hazards.steps_from_start(episodes)
    assert position.tolist() == list(range(8)) * 2
    costs = np.zeros(16)
    costs[[6, 7]] = 1.0  # episode 0 violates at its end; episode 1 never
    alpha = 1.0 - position / 8 - 0.5 * costs
    masks = alpha_near_hazards.groups(alpha_near_hazards.steps_to_cost(costs, episodes))
    bands = alpha_near_hazards.quarters(position)
    assert [label for label, _ in bands] == ["steps 0–1", "steps 2–3", "steps 4–5",
                                             "steps 6–7"]
    pairs = alpha_near_hazards.within_quarters(alpha, masks, bands)
    assert all(np.isnan(cost) for cost, _ in pairs[:3])  # no cost before step 6
    at_cost, none_ahead = pairs[3]
    assert none_ahead == pytest.approx(1.0 - 6.5 / 8)  # episode 1's steps 6 and 7
    assert at_cost == pytest.approx(none_ahead - 0.5)
    means = alpha_near_hazards.group_means(alpha, masks)
    assert means["at a cost"] == pytest.approx(at_cost)
    assert np.isnan(means["> 100 before"])


def test_a_composer_the_store_lacks_is_one_line_and_creates_no_store(tmp_path, capsys):
    store = tmp_path / "none"
    assert alpha_near_hazards.main(["--store", str(store), "nothing"]) == 2
    assert capsys.readouterr().err.strip() == ("error: no item named 'nothing' in the store "
                                               "(it is empty)")
    assert not store.exists()


def test_the_trained_on_column_counts_the_composers_subset_and_its_states_before_a_cost():
    from tasks.dataset import to_table

    # Three episodes of 4 steps: episode 0 best and costly (2 costly steps), episode 1
    # second and safe, episode 2 worst and safe. The paper's selection (top 1 among those
    # with cost <= 1) trains on episode 1 alone: 4 states, none before a cost.
    n = 12
    episodes = np.repeat([0, 1, 2], 4)
    rewards = np.repeat([3.0, 2.0, 1.0], 4).astype(np.float32)
    costs = np.zeros(n, dtype=np.float32)
    costs[[2, 3]] = 1.0
    table = to_table({"obs": np.zeros((n, 3), np.float32), "actions": np.zeros((n, 1), np.float32),
                      "rewards": rewards, "costs": costs, "next_obs": np.zeros((n, 3), np.float32),
                      "terminals": np.zeros(n, bool), "timeouts": np.tile([0, 0, 0, 1], 3).astype(bool),
                      "episode": episodes})
    spec = {"data": {"top_episodes": 1, "max_episode_cost": 1}}
    assert alpha_near_hazards.trained_near_cost(table, spec, "c") == "4 / 0"
    assert alpha_near_hazards.trained_near_cost(table, {}, "c") == "12 / 4"  # all: 0's steps 0–3
    assert alpha_near_hazards.alpha_start({"mode": "parameter", "alpha": {
        "output": "raw", "init": "zero", "scale": 0.0625}}) == "parameter raw/zero×0.0625"


def test_by_step_averages_the_masked_states_of_each_step_and_plots(tmp_path):
    position = np.array([0, 1, 2, 0, 1, 2])
    alpha = np.array([1.0, 2.0, 3.0, 3.0, 4.0, 5.0])
    mask = np.array([True, True, False, True, False, False])
    means = alpha_near_hazards.by_step(alpha, position, mask)
    assert means[:2].tolist() == [2.0, 2.0] and np.isnan(means[2])
    path = tmp_path / "alpha.png"
    alpha_near_hazards.plot(str(path), [("c\nparameter raw/newest", "safety", means, means)])
    assert path.stat().st_size > 0
