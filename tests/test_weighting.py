"""The weightings' formulas, on critics whose Q and V are set by hand."""

import math

import pytest
import torch

from library.critics import CriticConfig, FeasibilityConfig, FeasibilityCritic, IQLCritics
from library.diffusion import StateNormalizer
from library.errors import SpecError
from library.weighting import WeightingConfig, make_weighting


def critics_with(q_r, v_r, q_h, v_h):
    """IQL and feasibility critics whose values are the given per-sample tensors [B]."""
    iql = IQLCritics(CriticConfig(obs_dim=1, act_dim=1, hidden=4), StateNormalizer.identity(1))
    feas = FeasibilityCritic(FeasibilityConfig(obs_dim=1, act_dim=1, hidden=4), StateNormalizer.identity(1))
    iql.q, iql.value = (lambda obs, a: q_r), (lambda obs: v_r)
    feas.q, feas.value = (lambda obs, a: q_h), (lambda obs: v_h)
    return iql, feas


BATCH = {"obs": torch.zeros(4, 1), "actions": torch.zeros(4, 1)}
# Samples: feasible state + safe action, feasible + unsafe, infeasible (two actions).
Q_R = torch.tensor([1.0, 2.0, 0.0, 0.0])
V_R = torch.tensor([0.5, 0.5, 0.0, 0.0])
Q_H = torch.tensor([-1.0, 3.0, 2.0, 4.0])
V_H = torch.tensor([-0.5, -0.5, 2.5, 2.5])


def test_bc_weighs_every_sample_one():
    torch.testing.assert_close(make_weighting("bc")(BATCH), torch.ones(4))


def test_advantage_is_exp_beta_a_clipped():
    iql, _ = critics_with(torch.tensor([0.0, 1.0, 3.0, -2.0]), torch.zeros(4), None, None)
    w = make_weighting("advantage", iql=iql, config=WeightingConfig(beta=2.0, max_weight=100.0))(BATCH)
    torch.testing.assert_close(w, torch.tensor([1.0, math.exp(2.0), 100.0, math.exp(-4.0)]))


def test_feasibility_zeroes_unsafe_actions_and_ranks_recovery_in_infeasible_states():
    iql, feas = critics_with(Q_R, V_R, Q_H, V_H)
    config = WeightingConfig(cost_beta=1.0, max_cost_weight=150.0)
    w = make_weighting("feasibility", feasibility=feas, config=config)(BATCH)
    # Feasible: 1 for the safe action, 0 for the unsafe one. Infeasible: exp(V_h − Q_h).
    torch.testing.assert_close(w, torch.tensor([1.0, 0.0, math.exp(0.5), math.exp(-1.5)]))

    w = make_weighting("reward+feasibility", iql=iql, feasibility=feas, config=config)(BATCH)
    # The reward advantage matters only inside: exp(3·(1 − 0.5)) for the safe action.
    torch.testing.assert_close(w, torch.tensor([math.exp(1.5), 0.0, math.exp(0.5), math.exp(-1.5)]))


def test_weights_carry_no_gradient():
    iql = IQLCritics(CriticConfig(obs_dim=1, act_dim=1, hidden=4), StateNormalizer.identity(1))
    assert not make_weighting("advantage", iql=iql)(BATCH).requires_grad


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("awr", {}, "unknown weighting 'awr'"),
        ("advantage", {}, "needs fitted reward"),
        ("feasibility", {}, "needs a fitted feasibility critic"),
        ("reward+feasibility", {"feasibility": "given"}, "needs fitted reward"),
    ],
)
def test_bad_weighting_is_a_spec_error(name, kwargs, message):
    if kwargs.get("feasibility") == "given":
        kwargs = {"feasibility": critics_with(Q_R, V_R, Q_H, V_H)[1]}
    with pytest.raises(SpecError, match=message) as err:
        make_weighting(name, **kwargs)
    assert str(err.value).startswith("weighting: ")


def test_bad_weighting_config_names_the_field():
    with pytest.raises(SpecError, match="weighting.beta"):
        WeightingConfig(beta=0.0)
