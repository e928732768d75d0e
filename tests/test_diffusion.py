"""The base policy: schedule, normaliser, loss, sampler and IDQL selection."""

import math

import pytest
import torch
from library_builders import ACT_DIM, observations, tiny_policy

from library.diffusion import (
    DiffusionPolicy,
    PolicyConfig,
    StateNormalizer,
    select_action,
    vp_betas,
)
from library.errors import DataError, ShapeError, SpecError

torch.set_num_threads(1)


def test_vp_schedule_matches_the_formula():
    betas = vp_betas(5, 0.1, 10.0)
    for t in range(1, 6):
        expected = 1 - math.exp(-0.1 / 5 - 0.5 * (10.0 - 0.1) * (2 * t - 1) / 25)
        assert betas[t - 1].item() == pytest.approx(expected, rel=1e-6)
    assert (betas[1:] > betas[:-1]).all() and (betas > 0).all() and (betas < 1).all()
    policy = tiny_policy()
    assert torch.allclose(policy.alpha_bars, torch.cumprod(1 - betas, 0))


def test_normaliser_floors_constant_dims():
    obs = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))
    obs[:, 1] = 3.0  # constant in the pretraining data
    obs[:, 2] = 1000.0 + 1e-4 * obs[:, 0]  # near-constant relative to its magnitude
    norm = StateNormalizer.from_data(obs)
    assert norm.std[1].item() == 1.0 and norm.std[2].item() == 1.0
    assert norm.std[0].item() == pytest.approx(obs[:, 0].std(unbiased=False).item(), rel=1e-5)
    # A new task that moves the constant dim gets moderate inputs, not thousands.
    new_task = torch.tensor([[0.0, 5.0, 1001.0, 0.0]])
    assert norm(new_task).abs().max().item() <= 2.0
    # Everything is clamped to ±10.
    assert norm(torch.tensor([[1e6, -1e6, 0.0, 0.0]])).abs().max().item() == 10.0


def test_normaliser_rejects_bad_data():
    with pytest.raises(DataError, match="non-finite"):
        StateNormalizer.from_data(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ShapeError, match=r"\[N, S\]"):
        StateNormalizer.from_data(torch.zeros(5))
    with pytest.raises(ShapeError, match="normaliser has 3 state dims"):
        DiffusionPolicy(PolicyConfig(obs_dim=4, act_dim=2), StateNormalizer.identity(3))


def test_config_validation_names_the_field():
    with pytest.raises(SpecError, match="^obs_dim:"):
        PolicyConfig(obs_dim=0, act_dim=2)
    with pytest.raises(SpecError, match="^time_dim:"):
        PolicyConfig(obs_dim=3, act_dim=2, time_dim=7)
    with pytest.raises(SpecError, match="^policy.width: unknown"):
        PolicyConfig.from_dict({"obs_dim": 3, "act_dim": 2, "width": 3})
    # YAML's `true` is not a count or a rate, and NaN is not a number
    with pytest.raises(SpecError, match="^hidden: must be an integer >= 1, got True"):
        PolicyConfig(obs_dim=3, act_dim=2, hidden=True)
    for bad in (True, float("nan")):
        with pytest.raises(SpecError, match="^beta_min: must be a positive number"):
            PolicyConfig(obs_dim=3, act_dim=2, beta_min=bad)
    cfg = PolicyConfig(obs_dim=3, act_dim=2, hidden=64)
    assert PolicyConfig.from_dict(cfg.to_dict()) == cfg


def test_loss_terms_and_weights():
    policy = tiny_policy()
    obs = observations(16)
    actions = torch.rand(16, ACT_DIM, generator=torch.Generator().manual_seed(0)) * 2 - 1
    terms = policy.loss(obs, actions, generator=torch.Generator().manual_seed(1))
    assert set(terms) == {"loss", "mse"} and terms["loss"].requires_grad
    assert torch.equal(terms["loss"].detach(), terms["mse"])
    zero = policy.loss(obs, actions, torch.zeros(16), generator=torch.Generator().manual_seed(1))
    assert zero["loss"].item() == 0.0 and zero["mse"].item() == terms["mse"].item()
    doubled = policy.loss(obs, actions, torch.full((16,), 2.0), generator=torch.Generator().manual_seed(1))
    assert doubled["loss"].item() == pytest.approx(2 * terms["loss"].item(), rel=1e-6)
    with pytest.raises(ShapeError, match=r"weights must be \[16\]"):
        policy.loss(obs, actions, torch.ones(15))
    with pytest.raises(ShapeError, match="actions must be"):
        policy.loss(obs, actions[:, :2])


def test_sample_is_bounded_and_reproducible():
    policy = tiny_policy()
    obs = observations(64)
    a1 = policy.sample(obs, torch.Generator().manual_seed(3))
    a2 = policy.sample(obs, torch.Generator().manual_seed(3))
    assert a1.shape == (64, ACT_DIM) and torch.equal(a1, a2)
    # A network that predicts huge noise would step far outside [-1, 1]: the sampler clips
    # every x_t, so the actions stay in the action space (and hit its edges).
    with torch.no_grad():
        policy.net.output.bias.fill_(-50.0)
    wild = policy.sample(obs, torch.Generator().manual_seed(3))
    assert wild.abs().max().item() == 1.0
    with pytest.raises(ShapeError, match="obs must be"):
        policy.sample(torch.zeros(2, 9))


def test_eps_fn_replaces_the_network():
    policy = tiny_policy()
    obs = observations(8)
    g = torch.Generator
    same = policy.sample(obs, g().manual_seed(0), eps_fn=policy.net)
    assert torch.equal(same, policy.sample(obs, g().manual_seed(0)))
    calls = []

    def zero_eps(a_t, s_norm, t):
        calls.append(int(t[0]))
        return torch.zeros_like(a_t)

    policy.sample(obs, g().manual_seed(0), eps_fn=zero_eps)
    assert calls == [5, 4, 3, 2, 1]


def test_learns_a_state_dependent_action():
    """Sign or schedule errors in the sampler show up as a policy that cannot fit two actions."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(PolicyConfig(obs_dim=1, act_dim=1, hidden=32, n_blocks=1))
    obs = torch.tensor([[-1.0], [1.0]]).repeat(32, 1)
    actions = torch.tensor([[-0.5], [0.7]]).repeat(32, 1)
    opt = torch.optim.Adam(policy.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        loss = policy.loss(obs, actions, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    sampled = policy.sample(torch.tensor([[-1.0], [1.0]]).repeat(100, 1), g).view(100, 2)
    assert sampled[:, 0].mean().item() == pytest.approx(-0.5, abs=0.1)
    assert sampled[:, 1].mean().item() == pytest.approx(0.7, abs=0.1)


def test_select_action_picks_by_critic():
    obs = torch.zeros(3, 2)
    counter = iter(range(1000))

    def sample_fn(o):
        # Candidate j of state b gets action value j (distinct, so the choice is visible).
        return torch.tensor([[float(next(counter) % 4)] for _ in range(o.shape[0])])

    def q_fn(o, a):
        return -(a[:, 0] - 2.0).abs()  # best at 2

    best = select_action(sample_fn, obs, 4, q_fn)
    assert best.shape == (3, 1) and (best == 2.0).all()
    worst = select_action(sample_fn, obs, 4, q_fn, minimize=True)
    assert (worst == 0.0).all()
    seen = []
    select_action(lambda o: seen.append(o.shape[0]) or torch.zeros(o.shape[0], 1), obs, 8)
    assert seen == [3]  # no critic: one sample per state
    with pytest.raises(SpecError, match="n_candidates"):
        select_action(sample_fn, obs, 0)


def test_the_official_network_shape_is_a_choice_skills_adapt_as_well():
    """block_width 4 (hidden → 4·hidden → hidden) and learned Fourier time features."""
    from library.lora import add_skill, lora_layers, trainable_only, use_skills
    from library.serialization import dump_base, load_base

    cfg = PolicyConfig(obs_dim=3, act_dim=2, hidden=16, n_blocks=2, block_width=4,
                       time_embedding="learned")
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg)
    block = policy.net.blocks[0]
    assert (block.fc1.in_features, block.fc1.out_features, block.fc2.out_features) == (16, 64, 16)
    assert isinstance(policy.net.freqs, torch.nn.Parameter)
    assert policy.net.freqs.requires_grad  # trained with the base
    config, tensors = dump_base(policy)
    assert "net.freqs" in tensors
    again = load_base(config, tensors)
    assert torch.equal(again.net.freqs, policy.net.freqs)
    obs = torch.randn(4, 3)
    g = torch.Generator().manual_seed(1)
    before = policy.sample(obs, torch.Generator().manual_seed(1))
    add_skill(policy, "walk", generator=g)
    assert lora_layers(policy)["net.blocks.0.fc1"].lora_B["walk"].weight.shape == (64, 8)
    params = trainable_only(policy, "walk")
    assert not policy.net.freqs.requires_grad and all(p is not policy.net.freqs for p in params)
    with use_skills(policy, ["walk"]):
        assert torch.equal(policy.sample(obs, torch.Generator().manual_seed(1)), before)
    with pytest.raises(SpecError, match="^block_width"):
        PolicyConfig(obs_dim=3, act_dim=2, block_width=0)
    with pytest.raises(SpecError, match="^time_embedding"):
        PolicyConfig(obs_dim=3, act_dim=2, time_embedding="rope")


def test_dropout_drops_block_inputs_while_own_weights_train_only():
    """The official blocks drop 0.1 of their input while a base or a skill trains; a
    composer's α and every sampled action see the whole network."""
    from library.composition import AlphaConfig, Composer
    from library.learners import BaseLearner, ComposerLearner, SkillLearner

    def pair(rate):
        torch.manual_seed(0)
        return DiffusionPolicy(PolicyConfig(obs_dim=3, act_dim=2, hidden=64, n_blocks=2,
                                            dropout=rate))

    plain, dropping = pair(0.0), pair(0.5)
    assert torch.equal(plain.net.output.weight, dropping.net.output.weight)
    obs, actions = torch.randn(256, 3), torch.rand(256, 2) * 2 - 1

    def loss(policy, **kw):
        return policy.loss(obs, actions, generator=torch.Generator().manual_seed(3), **kw)["loss"]

    # rate 0, or dropout off: the same draws and the same loss as a network without it
    assert torch.equal(loss(plain, dropout=True), loss(plain))
    assert torch.equal(loss(dropping), loss(plain))
    assert not torch.equal(loss(dropping, dropout=True), loss(plain))
    # the masks drop about `rate` of each block's input and rescale the rest
    masks = dropping._dropout_masks(4096, 0.5, torch.Generator().manual_seed(0), obs)
    assert len(masks) == 2 and masks[0].shape == (4096, 64)
    assert set(masks[0].unique().tolist()) == {0.0, 2.0}
    assert (masks[0] == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    # sampling never drops
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.equal(dropping.sample(obs[:8], g()), plain.sample(obs[:8], g()))

    batch = {"obs": obs, "actions": actions}
    torch.manual_seed(7)
    base_plain = BaseLearner(pair(0.0)).loss(batch)["loss"]
    torch.manual_seed(7)
    assert not torch.equal(BaseLearner(pair(0.5)).loss(batch)["loss"], base_plain)
    skills = {}
    for rate in (0.0, 0.5):
        policy = pair(rate)
        learner = SkillLearner(policy, "walk", generator=torch.Generator().manual_seed(1))
        with torch.no_grad():  # a trained-looking skill, so the composer's loss depends on it
            for p in learner.module.parameters():
                if p.requires_grad:
                    p.add_(0.1)
        torch.manual_seed(7)
        skill_loss = learner.loss(batch)["loss"]
        torch.manual_seed(11)
        composer = Composer(policy, ["walk"], mode="parameter",
                            alpha=AlphaConfig(output="raw", init="newest"),
                            generator=torch.Generator().manual_seed(2))
        torch.manual_seed(7)
        skills[rate] = (skill_loss, ComposerLearner(composer).loss(batch)["loss"])
    assert not torch.equal(skills[0.5][0], skills[0.0][0])
    assert torch.equal(skills[0.5][1], skills[0.0][1])
    with pytest.raises(SpecError, match="^dropout"):
        PolicyConfig(obs_dim=3, act_dim=2, dropout=1.0)
