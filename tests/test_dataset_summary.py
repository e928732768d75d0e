"""`psec data list` / `psec data show`: a stored dataset's episodes, by cost band and by the
behaviour policy that collected them (tasks/dataset_summary.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from library.store import SkillStore
from pipeline.cli import main
from tasks.dataset import to_table
from tasks.dataset_summary import describe, summarise


def safe_data(episode_rewards, episode_costs, length=4, policies=None, suite="bullet_safety",
              env="SafetyCarRun-v0"):
    """Episodes of `length` steps; each step earns its episode's reward and cost over the
    steps (episode i's return is episode_rewards[i])."""
    n = len(episode_rewards) * length
    obs = np.zeros((n, 3), np.float32)
    rewards = np.repeat(np.asarray(episode_rewards, np.float32) / length, length)
    costs = np.repeat(np.asarray(episode_costs, np.float32) / length, length)
    arrays = dict(obs=obs, actions=np.zeros((n, 2), np.float32), rewards=rewards, costs=costs,
                  next_obs=obs, terminals=np.zeros(n, bool),
                  timeouts=np.arange(n) % length == length - 1)
    meta = {"suite": suite, "env": env, "source": "generate"}
    if policies is not None:
        meta["episode_policy"] = policies
    return to_table(arrays, meta)


def test_costs_are_banded_around_the_threshold_with_each_bands_returns():
    table = safe_data([100, 200, 300, 400, 500], [0, 0, 4, 10, 30])
    summary = summarise(table, cost_threshold=10)
    assert (summary.transitions, summary.episodes, summary.timeouts) == (20, 5, 5)
    bands = {band.label: band for band in summary.cost_bands}
    assert list(bands) == ["no cost", "0 < cost < 10", "cost >= 10"]
    assert (bands["no cost"].episodes, bands["no cost"].return_mean) == (2, pytest.approx(150))
    assert (bands["0 < cost < 10"].episodes, bands["0 < cost < 10"].return_max) == (1, 300)
    # The threshold itself is on the unsafe side: DSRL's normalised cost 1 is the limit.
    assert (bands["cost >= 10"].episodes, bands["cost >= 10"].return_max) == (2, 500)
    assert summary.returns.quantiles == pytest.approx((100, 200, 300, 400, 500))
    assert summary.costs.mean == pytest.approx(44 / 5)
    # A higher threshold moves the cost-10 episode to the safe side.
    moved = {band.label: band.episodes for band in summarise(table, 20).cost_bands}
    assert moved == {"no cost": 2, "0 < cost < 20": 2, "cost >= 20": 1}


def test_scores_are_the_suites_normalised_returns():
    from tasks.suites import get_suite

    summary = summarise(safe_data([100, 300], [0, 0]), cost_threshold=10)
    score = get_suite("bullet_safety").score
    assert summary.scores.mean == pytest.approx((score("SafetyCarRun-v0", 100)
                                                 + score("SafetyCarRun-v0", 300)) / 2)
    assert summary.cost_bands[0].score_mean == pytest.approx(summary.scores.mean)


def test_no_score_where_the_suite_needs_more_than_a_return():
    # Meta-World scores success, which a dataset's rows do not record; an env the suite has
    # no reference returns for (an imported file's own name) has no score either.
    for suite, env in (("metaworld", "reach-v3"), ("bullet_safety", "SomeoneElsesEnv-v0")):
        summary = summarise(safe_data([1, 2], [0, 0], suite=suite, env=env), 10)
        assert summary.scores is None and summary.cost_bands[0].score_mean is None


def test_episodes_are_grouped_by_the_policy_that_collected_them():
    table = safe_data([700, 400, 480, 790], [180, 0, 0, 170],
                      policies=["expert", "safe", "safe", "expert"])
    groups = {group.policy: group for group in summarise(table, 10).policies}
    assert list(groups) == ["expert", "safe"]
    assert groups["expert"].episodes == 2 and groups["expert"].return_mean == pytest.approx(745)
    assert groups["safe"].cost_mean == 0
    # A subset keeps its source's episode ids and the source's list, indexed by id.
    subset = table.filter(np.asarray(table.column("episode")) >= 2)
    groups = {group.policy: group.episodes for group in summarise(subset, 10).policies}
    assert groups == {"safe": 1, "expert": 1}
    assert summarise(safe_data([1, 2], [0, 0]), 10).policies == ()


def test_data_without_costs_has_no_cost_rows():
    table = safe_data([1, 2], [0, 0]).drop_columns(["costs"])
    summary = summarise(table, 10)
    assert summary.costs is None and summary.cost_bands == () and summary.cost_threshold is None
    text = describe("d", summary)
    assert "| return |" in text and "| cost |" not in text and "threshold" not in text


def test_describe_prints_counts_spreads_and_tables():
    table = safe_data([100, 200, 300, 400], [0, 3, 12, 0], policies=["a", "b", "a", "b"])
    text = describe("carrun", summarise(table, 10))
    first = text.splitlines()[0]
    assert first.startswith("dataset carrun: 16 transitions in 4 episodes (suite bullet_safety")
    assert "| return | 100 | 175 | 250 | 325 | 400 | 250 |" in text
    assert "| no cost | 2 | 250 | 400 |" in text
    assert "| 0 < cost < 10 | 1 | 200 | 200 |" in text
    assert "| a | 2 | 200 | 6 |" in text


@pytest.fixture
def store(tmp_path):
    store = SkillStore(str(tmp_path / "store"))
    store.put_dataset("carrun", safe_data([100, 200, 300], [0, 5, 20], policies=["a", "b", "a"]))
    store.put_dataset("plain", safe_data([1, 2], [0, 0]).drop_columns(["costs"]))
    return store


def test_a_summary_needs_only_the_scalar_columns(store):
    """What `psec data show` loads: no states or actions, the schema's metadata kept."""
    from tasks.dataset_summary import COLUMNS

    table = store.get_dataset("carrun", columns=list(COLUMNS))
    assert table.column_names == list(COLUMNS)
    assert summarise(table, 10) == summarise(store.get_dataset("carrun"), 10)


def test_psec_data_list_names_every_dataset_with_its_size(store, capsys):
    assert main(["data", "list", "--store", store.uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "TRANSITIONS", "SUITE", "ENV", "SOURCE"]
    assert [line.split()[:2] for line in lines[1:]] == [["carrun", "12"], ["plain", "8"]]


def test_psec_data_list_of_a_store_without_data(tmp_path, capsys):
    assert main(["data", "list", "--store", str(tmp_path / "empty")]) == 0
    assert "holds no dataset" in capsys.readouterr().out
    assert not (tmp_path / "empty").exists()  # looking creates no store


def test_psec_data_show_prints_the_summary_or_its_json(store, capsys):
    assert main(["data", "show", "carrun", "--store", store.uri, "--cost-threshold", "5"]) == 0
    out = capsys.readouterr().out
    assert "threshold 5" in out and "| 0 < cost < 5 | 0 |" in out and "| cost >= 5 | 2 |" in out
    assert main(["data", "show", "carrun", "--store", store.uri, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["episodes"] == 3 and printed["cost_threshold"] == 10.0
    assert [band["episodes"] for band in printed["cost_bands"]] == [1, 1, 1]
    assert [group["policy"] for group in printed["policies"]] == ["a", "b"]


@pytest.mark.parametrize("argv, needle", [
    (["data", "show", "nope"], "no dataset named 'nope' in the store (it holds carrun, plain)"),
    (["data", "show", "carrun", "--cost-threshold", "0"], "--cost-threshold must be > 0"),
])
def test_psec_data_show_errors_are_one_line_and_change_nothing(store, capsys, argv, needle):
    before = sorted(p.name for p in (Path(store.uri) / "datasets").iterdir())
    assert main([*argv, "--store", store.uri]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err
    assert sorted(p.name for p in (Path(store.uri) / "datasets").iterdir()) == before
