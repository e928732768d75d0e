"""End-to-end learning on toys whose right answer is known: each objective does its job.

* advantage weighting picks the rewarded action mode where BC keeps both;
* feasibility weighting removes unsafe actions where BC keeps them;
* a context-aware composer of two skills, each fitted on half of a mixture, fits the
  whole mixture where either skill alone fits only its half.
"""

import pytest
import torch
from learning_toys import bimodal_bandit, fit_feasibility, mixture_halves, wall_walk

from library.composition import AlphaConfig, Composer
from library.critics import CriticConfig, IQLCritics
from library.data import OfflineData
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.learners import BaseLearner, ComposerLearner, CriticLearner, SkillLearner
from library.lora import use_skills
from library.training import train
from library.weighting import make_weighting

torch.set_num_threads(1)
pytestmark = pytest.mark.slow


def fit_policy(data: OfflineData, weighting: str = "bc", steps: int = 1000, **critics) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = PolicyConfig(obs_dim=1, act_dim=1, hidden=64, n_blocks=2)
    policy = DiffusionPolicy(cfg, StateNormalizer.from_data(data.obs))
    train(BaseLearner(policy, weighting, **critics), data, steps=steps, batch_size=256, lr=1e-3, seed=0)
    return policy


def sample(sample_fn, obs: torch.Tensor) -> torch.Tensor:
    return sample_fn(obs, generator=torch.Generator().manual_seed(0))


def test_advantage_weighting_prefers_the_rewarded_mode():
    data = bimodal_bandit()
    iql = IQLCritics(CriticConfig(obs_dim=1, act_dim=1, hidden=64, target_rate=0.02),
                     StateNormalizer.from_data(data.obs))
    train(CriticLearner(iql=iql), data, steps=800, batch_size=256, lr=1e-3, seed=0)
    states = torch.rand(2000, 1, generator=torch.Generator().manual_seed(1)) * 2 - 1

    bc = sample(fit_policy(data).sample, states)
    awr = sample(fit_policy(data, "advantage", iql=iql).sample, states)
    assert 0.35 < (bc > 0).float().mean() < 0.65  # BC keeps both modes
    assert (awr > 0).float().mean() > 0.85  # the rewarded one dominates
    assert ((awr - 0.6).abs() < 0.2).float().mean() > 0.75  # and is a real mode, not a blur


def test_feasibility_weighting_drops_unsafe_actions():
    data = wall_walk()
    critic = fit_feasibility(data)
    # In feasible states, an action past the wall weighs exactly 0 and a safe one 1.
    batch = data.sample(4096, torch.Generator().manual_seed(2))
    states, actions = batch["obs"][:, 0], batch["actions"][:, 0]
    landing = states + 0.5 * actions
    feasible = states < 0.9
    weights = make_weighting("feasibility", feasibility=critic)(batch)
    assert (weights[feasible & (landing > 1.1)] == 0).all()
    assert (weights[feasible & (landing < 0.9)] == 1).float().mean() > 0.98

    near_wall = torch.rand(2000, 1, generator=torch.Generator().manual_seed(3)) * 0.4 + 0.6

    def unsafe_share(policy):
        return ((near_wall + 0.5 * sample(policy.sample, near_wall)) > 1.0).float().mean()

    assert unsafe_share(fit_policy(data)) > 0.1  # BC imitates the random walker (~0.2)
    assert unsafe_share(fit_policy(data, "feasibility", feasibility=critic)) < 0.05


def test_context_aware_composition_of_two_skills_fits_the_mixture():
    left, right, both = mixture_halves()
    # A base that knows neither half: BC on uniformly random actions.
    noise = OfflineData.from_arrays(**{
        f: getattr(both, f).numpy() for f in ("obs", "rewards", "next_obs", "terminals", "timeouts", "episode")
    }, actions=torch.rand(len(both), 1, generator=torch.Generator().manual_seed(4)).numpy() * 2 - 1)
    policy = fit_policy(noise, steps=600)
    for name, half in (("left", left), ("right", right)):
        learner = SkillLearner(policy, name, rank=4, alpha=8, generator=torch.Generator().manual_seed(5))
        train(learner, half, steps=600, batch_size=256, lr=1e-3, seed=1)
    # Neither skill is the task's own: α starts uniform, without the official pull toward
    # the newest skill (which would hold mean α_right at 1 and keep "left" out).
    composer = Composer(policy, ["left", "right"], "parameter",
                        AlphaConfig(hidden=32, init="uniform", reg=0.0),
                        generator=torch.Generator().manual_seed(6))
    train(ComposerLearner(composer), both, steps=600, batch_size=256, lr=1e-3, seed=2)

    states = torch.linspace(-0.95, 0.95, 400).unsqueeze(-1)
    target = torch.where(states < 0, 0.8, -0.8)

    def error(sample_fn):
        return (sample(sample_fn, states) - target).abs().mean().item()

    alone = {}
    for name in ("left", "right"):
        with use_skills(policy, [name]):
            alone[name] = error(policy.sample)
    composed = error(composer.sample)
    assert min(alone.values()) > 0.6  # each skill is right on its own half only
    assert composed < 0.3
    # α(s) learned which skill each state needs.
    alpha = composer.alpha(torch.tensor([[-0.5], [0.5]])).detach()
    assert alpha[0, 0] > alpha[0, 1] and alpha[1, 1] > alpha[1, 0]
