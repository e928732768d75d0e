"""IQL and feasibility critics: the backups they regress on, and what they learn on toys."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from learning_toys import fit_feasibility, toy_data, wall_walk

from library.critics import (
    CriticConfig,
    FeasibilityConfig,
    FeasibilityCritic,
    IQLCritics,
    expectile_loss,
    reward_scale,
)
from library.diffusion import StateNormalizer
from library.errors import SpecError
from library.learners import CriticLearner
from library.training import train

torch.set_num_threads(1)


def constant_value(critic, value: float) -> None:
    """Make the critic's V(s) ≡ value, to test a backup against known numbers."""
    head = critic.value_net[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(value)


def empirical_expectile(x: np.ndarray, tau: float) -> float:
    """The v solving τ·E[(x − v)+] = (1 − τ)·E[(v − x)+], by bisection."""
    lo, hi = float(x.min()), float(x.max())
    for _ in range(60):
        v = 0.5 * (lo + hi)
        if tau * np.clip(x - v, 0, None).mean() > (1 - tau) * np.clip(v - x, 0, None).mean():
            lo = v
        else:
            hi = v
    return v


def test_expectile_loss_is_minimised_at_the_expectile():
    x = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    v = torch.zeros((), requires_grad=True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        expectile_loss(x - v, 0.8).backward()
        opt.step()
    assert v.item() == pytest.approx(empirical_expectile(x.numpy(), 0.8), abs=1e-3)
    assert v.item() > x.mean().item()  # τ > 0.5: an upper expectile


def test_target_update_is_polyak_and_twins_reduce_pessimistically():
    cfg = CriticConfig(obs_dim=2, act_dim=1, hidden=8, target_rate=0.25)
    iql = IQLCritics(cfg, StateNormalizer.identity(2))
    before = [p.clone() for p in iql.target_q_nets.parameters()]
    with torch.no_grad():
        for p in iql.q_nets.parameters():
            p.add_(1.0)
    iql.update_target()
    for old, new, online in zip(before, iql.target_q_nets.parameters(), iql.q_nets.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)

    obs, actions = torch.randn(5, 2), torch.randn(5, 1)
    twins = iql._qs(iql.target_q_nets, obs, actions)  # [2, 5]
    torch.testing.assert_close(iql.q(obs, actions), twins.min(dim=0).values)
    feas = FeasibilityCritic(FeasibilityConfig(obs_dim=2, act_dim=1, hidden=8), StateNormalizer.identity(2))
    twins = feas._qs(feas.target_q_nets, obs, actions)
    torch.testing.assert_close(feas.q(obs, actions), twins.max(dim=0).values)


def test_iql_td_target_bootstraps_only_where_not_terminal():
    iql = IQLCritics(CriticConfig(obs_dim=1, act_dim=1, hidden=8, discount=0.9), StateNormalizer.identity(1))
    constant_value(iql, 2.0)
    batch = {
        "rewards": torch.tensor([1.0, 1.0, 1.0]),
        "terminals": torch.tensor([False, True, False]),
        "timeouts": torch.tensor([False, False, True]),  # a time limit still bootstraps
        "next_obs": torch.zeros(3, 1),
    }
    torch.testing.assert_close(iql._q_target(batch), torch.tensor([2.8, 1.0, 2.8]))
    scaled = IQLCritics(CriticConfig(obs_dim=1, act_dim=1, hidden=8, discount=0.9,
                                     reward_scale=4.0), StateNormalizer.identity(1))
    constant_value(scaled, 2.0)
    torch.testing.assert_close(scaled._q_target(batch), torch.tensor([5.8, 4.0, 5.8]))


def test_timeouts_stop_bootstrapping_where_the_config_says_so():
    """The official DSRL loader's masks, 1 − (terminal ∨ timeout), for both critics."""
    batch = {
        "rewards": torch.tensor([1.0, 1.0, 1.0]),
        "costs": torch.tensor([0.0, 0.0, 0.0]),
        "terminals": torch.tensor([False, True, False]),
        "timeouts": torch.tensor([False, False, True]),
        "next_obs": torch.zeros(3, 1),
    }
    iql = IQLCritics(CriticConfig(obs_dim=1, act_dim=1, hidden=8, discount=0.9,
                                  stop_at_timeouts=True), StateNormalizer.identity(1))
    constant_value(iql, 2.0)
    torch.testing.assert_close(iql._q_target(batch), torch.tensor([2.8, 1.0, 1.0]))
    feasibility = FeasibilityConfig(obs_dim=1, act_dim=1, hidden=8, discount=0.9)
    targets = {}
    for stop in (False, True):
        critic = FeasibilityCritic(dataclasses.replace(feasibility, stop_at_timeouts=stop),
                                   StateNormalizer.identity(1))
        constant_value(critic, 3.0)  # an unsafe future past the data's last state
        targets[stop] = critic._q_target(batch)
    # Bootstrapping past the timeout calls a cost-free last state infeasible (Q_h > 0);
    # stopping there gives it its own h = −1, as at the terminal.
    torch.testing.assert_close(targets[False], torch.tensor([2.6, -1.0, 2.6]))
    torch.testing.assert_close(targets[True], torch.tensor([2.6, -1.0, -1.0]))


def test_reward_scale_gives_the_returns_a_range_of_one_horizon():
    assert reward_scale([10.0, 60.0, 35.0], horizon=1000) == 20.0  # IQL: 1000 / (max − min)
    assert reward_scale([-3.0, 2.0], horizon=200) == 40.0
    assert reward_scale([5.0, 5.0], horizon=1000) == 1.0  # no spread: left alone
    with pytest.raises(SpecError, match="critics.reward_scale"):
        CriticConfig(obs_dim=1, act_dim=1, reward_scale=0.0)


def test_hj_backup_follows_fisor():
    cfg = FeasibilityConfig(obs_dim=1, act_dim=1, hidden=8, discount=0.9, violation_scale=25.0)
    feas = FeasibilityCritic(cfg, StateNormalizer.identity(1))
    batch = {
        "costs": torch.tensor([0.0, 0.0, 0.5, 0.5]),
        "terminals": torch.tensor([False, False, False, True]),
        "next_obs": torch.zeros(4, 1),
    }
    # h = −1 where safe, 25·cost where violated: [−1, −1, 12.5, 12.5]
    constant_value(feas, 3.0)
    # Q_h = (1 − γ)·h + γ·max(h, V_h(s')); Q_h = h at a terminal.
    expected = torch.tensor([0.1 * -1 + 0.9 * 3.0, 0.1 * -1 + 0.9 * 3.0, 12.5, 12.5])
    torch.testing.assert_close(feas._q_target(batch), expected)
    constant_value(feas, -1.0)  # a safe future: the target stays −1 where h is −1
    torch.testing.assert_close(feas._q_target(batch)[:2], torch.tensor([-1.0, -1.0]))


@pytest.mark.parametrize(
    "field, kwargs",
    [
        ("critics.expectile", {"expectile": 1.0}),
        ("critics.discount", {"discount": 0.0}),
        ("critics.hidden", {"hidden": 0}),
        ("critics.target_rate", {"target_rate": 0.0}),
    ],
)
def test_bad_critic_config_names_the_field(field, kwargs):
    with pytest.raises(SpecError, match=field):
        CriticConfig(obs_dim=1, act_dim=1, **kwargs)
    with pytest.raises(SpecError, match="critics.violation_scale"):
        FeasibilityConfig(obs_dim=1, act_dim=1, violation_scale=-1.0)


def test_critic_configs_round_trip_through_dicts():
    cfg = FeasibilityConfig(obs_dim=3, act_dim=2, hidden=32, violation_scale=5.0)
    assert FeasibilityConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SpecError, match="critics.violation_scale: unknown field"):
        CriticConfig.from_dict(cfg.to_dict())
    with pytest.raises(SpecError, match="critics.act_dim: missing"):
        CriticConfig.from_dict({"obs_dim": 3})
    # Items stored before a field existed load at its default (what they were fitted with).
    stored = {key: value for key, value in cfg.to_dict().items() if key != "stop_at_timeouts"}
    assert FeasibilityConfig.from_dict(stored).stop_at_timeouts is False


def test_iql_value_is_the_expectile_of_in_data_returns():
    # A bandit (every transition terminal) with r = a, a ~ U[-1, 1] whatever the state:
    # Q(s, a) = a and V(s) must be the τ-expectile of U[-1, 1], not its mean (0) or max (1).
    rng = np.random.default_rng(0)
    n = 4096
    obs = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    data = toy_data(obs, actions, rewards=actions[:, 0])
    tau = 0.7
    cfg = CriticConfig(obs_dim=1, act_dim=1, hidden=64, expectile=tau, target_rate=0.02)
    iql = IQLCritics(cfg, StateNormalizer.from_data(data.obs))
    result = train(CriticLearner(iql=iql), data, steps=1500, batch_size=256, lr=1e-3, seed=0, log_every=250)

    first, last = result.history[0][1], result.history[-1][1]
    assert last["iql/q_loss"] < 0.05 * first["iql/q_loss"]
    exact = (math.sqrt(tau) - math.sqrt(1 - tau)) / (math.sqrt(tau) + math.sqrt(1 - tau))  # 0.209
    assert exact == pytest.approx(empirical_expectile(actions[:, 0], tau), abs=0.02)
    with torch.no_grad():
        v = iql.value(torch.linspace(-0.9, 0.9, 19).unsqueeze(-1))
        q = iql.q(torch.zeros(5, 1), torch.linspace(-0.8, 0.8, 5).unsqueeze(-1))
    assert v.mean().item() == pytest.approx(exact, abs=0.06)
    assert v.std().item() < 0.06  # the same in every state
    torch.testing.assert_close(q, torch.linspace(-0.8, 0.8, 5), atol=0.1, rtol=0)


def test_iql_bootstraps_discounted_returns_and_its_losses_fall():
    # A self-loop: s' = s, r = s, never terminal -> Q(s, a) = V(s) = s / (1 − γ).
    rng = np.random.default_rng(1)
    n = 2048
    obs = rng.uniform(0, 1, (n, 1)).astype(np.float32)
    actions = rng.uniform(-1, 1, (n, 1)).astype(np.float32)
    data = toy_data(obs, actions, obs, rewards=obs[:, 0], terminals=np.zeros(n, bool))
    cfg = CriticConfig(obs_dim=1, act_dim=1, hidden=64, discount=0.8, target_rate=0.05)
    iql = IQLCritics(cfg, StateNormalizer.from_data(data.obs))
    result = train(CriticLearner(iql=iql), data, steps=1500, batch_size=256, lr=2e-3, seed=0, log_every=100)

    q_losses = [terms["iql/q_loss"] for _, terms in result.history]
    assert min(q_losses[-3:]) < 0.1 * max(q_losses)
    s = torch.linspace(0.05, 0.95, 10).unsqueeze(-1)
    with torch.no_grad():
        torch.testing.assert_close(iql.value(s), 5.0 * s[:, 0], atol=0.25, rtol=0)


def test_feasibility_critic_finds_the_feasible_region_and_unsafe_actions():
    critic = fit_feasibility(wall_walk())
    with torch.no_grad():
        inside = torch.linspace(-0.9, 0.7, 9).unsqueeze(-1)
        outside = torch.linspace(1.7, 2.4, 8).unsqueeze(-1)
        assert critic.feasible(inside).all()
        assert not critic.feasible(outside).any()
        # V_h ≈ −1 deep inside (no violation ever needed), large outside.
        torch.testing.assert_close(critic.value(inside[:4]), -torch.ones(4), atol=0.3, rtol=0)
        # From s = 0.8, a step ending past the wall is unsafe (Q_h > 0), one short of it is safe.
        s = torch.full((2, 1), 0.8)
        q_h = critic.q(s, torch.tensor([[0.9], [-0.5]]))
        assert q_h[0] > 0 > q_h[1]
