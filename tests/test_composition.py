"""Composers: one-hot equals the skill, only θ trains, any number of skills, four modes."""

import pytest
import torch
from library_builders import ACT_DIM, add_trained_looking_skill, observations, tiny_policy

from library.composition import AlphaConfig, Composer
from library.errors import SpecError, StoreError
from library.lora import use_skills

torch.set_num_threads(1)

SKILLS = ["a", "b", "c"]


def policy_with_skills():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "a", seed=1, rank=2)
    add_trained_looking_skill(policy, "b", seed=2, rank=6)
    add_trained_looking_skill(policy, "c", seed=3, kind="full")
    return policy


def one_hot_composer(policy, skills, mode, index):
    """A composer whose α(s) is exactly e_index for every state (all zero when skills[index]
    is "base" in a parameter-level mode, which has no weight for it)."""
    composer = Composer(policy, skills, mode, AlphaConfig(output="raw", init="zero"))
    position = composer.skills.index(skills[index]) if skills[index] in composer.skills else None
    with torch.no_grad():
        if position is None:
            pass
        elif mode == "fixed":
            composer.logits[position] = 1.0
        else:
            composer.context.net[-1].bias[position] = 1.0
    return composer


@pytest.mark.parametrize("mode", ["parameter", "noise", "action", "fixed"])
@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_one_hot_composition_equals_the_single_skill_exactly(mode, index):
    policy = policy_with_skills()
    skills = [*SKILLS, "base"]
    composer = one_hot_composer(policy, skills, mode, index)
    obs = observations(9)
    alpha = composer.alpha(obs)
    k = len(composer.skills)
    assert torch.equal(alpha, torch.eye(4)[index][:k].expand(9, -1))
    composed = composer.sample(obs, torch.Generator().manual_seed(4))
    with use_skills(policy, [skills[index]]):
        single = policy.sample(obs, torch.Generator().manual_seed(4))
    assert torch.equal(composed, single)


def test_base_has_a_weight_only_where_it_is_a_policy_of_its_own():
    """W0 is in every parameter-level composition already: "base" gets no α slot there."""
    policy = policy_with_skills()
    for mode in ("parameter", "fixed"):
        assert Composer(policy, ["base", "a", "b"], mode).skills == ["a", "b"]
        with pytest.raises(SpecError, match="^skills: .*besides 'base'"):
            Composer(policy, ["base"], mode)
    for mode in ("noise", "action"):
        composer = Composer(policy, ["base", "a", "b"], mode)
        assert composer.skills == ["base", "a", "b"]
        assert composer.alpha(observations(3)).shape == (3, 3)


@pytest.mark.parametrize("mode", ["parameter", "noise", "action", "fixed"])
def test_untrained_default_composer_is_the_new_skill_alone(mode):
    """By default α starts at the new skill (last) at full strength: a composer with 0 steps
    acts exactly like that skill, and the regulariser is 0 there."""
    policy = policy_with_skills()
    composer = Composer(policy, ["base", "a", "b"], mode, generator=torch.Generator().manual_seed(0))
    obs = observations(8)
    composed = composer.sample(obs, torch.Generator().manual_seed(5))
    with use_skills(policy, ["b"]):
        alone = policy.sample(obs, torch.Generator().manual_seed(5))
    assert torch.equal(composed, alone)
    assert composer.alpha_reg(obs).item() == 0.0


def test_alpha_regulariser_is_the_official_one():
    """For two skills it equals the official (mean α − α_r/2)² + (mean α_new − α_r)² with
    α_r = 16 and the ε-loss summed (not averaged) over action dims; any k generalises it."""
    policy = policy_with_skills()
    composer = Composer(policy, ["a", "b"], "parameter", AlphaConfig(reg=0.5))
    with torch.no_grad():
        composer.context.net[-1].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        composer.context.net[-1].bias.copy_(torch.tensor([0.3, 0.6]))
    obs = observations(32)
    alpha16 = 16.0 * composer.alpha(obs).detach()  # the official units: 16 = full strength
    official = (alpha16.mean() - 8.0) ** 2 + (alpha16[:, 1].mean() - 16.0) ** 2
    ours = composer.alpha_reg(obs)
    torch.testing.assert_close(ours * ACT_DIM, 0.5 * official)
    # k = 3: the overall mean is pulled to 1/k, the new skill's mean to 1.
    three = Composer(policy, ["a", "b", "c"], "parameter", AlphaConfig(reg=1.0, init="uniform"))
    bracket = (1 / 3 - 1 / 3) ** 2 + (1 / 3 - 1.0) ** 2
    torch.testing.assert_close(three.alpha_reg(obs).item(), 256 / ACT_DIM * bracket, rtol=1e-5,
                               atol=1e-5)
    terms = three.loss(obs, torch.zeros(32, ACT_DIM))
    torch.testing.assert_close(terms["alpha_reg"].item(), 256 / ACT_DIM * bracket, rtol=1e-5,
                               atol=1e-5)


def test_mixed_one_hot_rows_match_their_skills():
    """Per-sample one-hot α sends each state to its own skill (batched path, float tolerance)."""
    policy = policy_with_skills()
    composer = Composer(policy, SKILLS, "parameter", AlphaConfig(output="raw", init="zero"))
    obs = observations(6)
    pick = torch.tensor([0, 1, 2, 2, 1, 0])
    a_t = torch.randn(6, ACT_DIM, generator=torch.Generator().manual_seed(0))
    s = policy.normalizer(obs)
    t = torch.full((6,), 3)
    with use_skills(policy, SKILLS, torch.eye(3)[pick]):
        batched = policy.net(a_t, s, t)
    for row, skill in enumerate(pick.tolist()):
        with use_skills(policy, [SKILLS[skill]]):
            single = policy.net(a_t[row : row + 1], s[row : row + 1], t[row : row + 1])
        torch.testing.assert_close(batched[row : row + 1], single, rtol=1e-5, atol=1e-5)
    assert composer.alpha(obs).shape == (6, 3)


def test_noise_mode_is_the_weighted_sum_of_skill_noises():
    policy = policy_with_skills()
    composer = Composer(policy, [*SKILLS, "base"], "noise", AlphaConfig(output="softmax"))
    with torch.no_grad():
        composer.context.net[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    obs = observations(5)
    alpha = composer.alpha(obs).detach()

    def separate_calls(a_t, s_norm, t):
        eps = torch.zeros_like(a_t)
        for i, skill in enumerate(composer.skills):
            with use_skills(policy, [skill]):
                eps += alpha[:, i : i + 1] * policy.net(a_t, s_norm, t)
        return eps

    expected = policy.sample(obs, torch.Generator().manual_seed(7), eps_fn=separate_calls)
    composed = composer.sample(obs, torch.Generator().manual_seed(7))
    torch.testing.assert_close(composed, expected, rtol=1e-5, atol=1e-5)


def test_a_large_training_batch_runs_skill_by_skill_with_the_same_loss(monkeypatch):
    from library import composition

    policy = policy_with_skills()
    composer = Composer(policy, [*SKILLS, "base"], "noise", AlphaConfig(output="softmax"))
    with torch.no_grad():
        composer.context.net[-1].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    obs = observations(composition.SKILL_BY_SKILL_ROWS)
    actions = torch.rand(len(obs), ACT_DIM, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def loss():
        composer.zero_grad()
        value = composer.loss(obs, actions, generator=torch.Generator().manual_seed(2))["loss"]
        value.backward()
        return value.detach(), [p.grad.clone() for p in composer.context.parameters()]

    by_skill = loss()
    monkeypatch.setattr(composition, "SKILL_BY_SKILL_ROWS", len(obs) + 1)
    stacked = loss()
    torch.testing.assert_close(by_skill, stacked, rtol=1e-5, atol=1e-6)


def test_action_mode_trains_on_each_skill_s_own_samples_in_skill_order():
    from library import composition

    policy = policy_with_skills()
    composer = Composer(policy, [*SKILLS, "base"], "action")
    obs = observations(composition.SKILL_BY_SKILL_ROWS)
    drawn = composer._skill_actions(obs, composer.skills, torch.Generator().manual_seed(3),
                                    training=True)
    generator = torch.Generator().manual_seed(3)  # one skill after another, one generator
    for i, skill in enumerate(composer.skills):
        with use_skills(policy, [] if skill == "base" else [skill]):
            torch.testing.assert_close(drawn[i], policy.sample(obs, generator), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["noise", "action"])
def test_sampling_stacks_the_skills_whatever_the_batch(mode):
    # An episode's action must not depend on how many episodes are rolled out beside it.
    from library import composition

    policy = policy_with_skills()
    composer = Composer(policy, [*SKILLS, "base"], mode, AlphaConfig(output="softmax"))
    obs = observations(composition.SKILL_BY_SKILL_ROWS + 2)

    def noise(n):  # one generator per state, as evaluation gives each episode its own
        return [torch.Generator().manual_seed(seed) for seed in range(n)]

    many = composer.sample(obs, noise(len(obs)))
    few = composer.sample(obs[:2], noise(2))
    torch.testing.assert_close(many[:2], few, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["parameter", "noise", "action", "fixed"])
def test_only_theta_trains(mode):
    policy = policy_with_skills()
    composer = Composer(policy, SKILLS, mode, AlphaConfig(output="softmax"), torch.Generator().manual_seed(0))
    trainable = [p for p in composer.parameters() if p.requires_grad]
    theta_ids = {id(p) for p in (composer.context.parameters() if composer.context else [composer.logits])}
    assert {id(p) for p in trainable} == theta_ids
    frozen = {n: p.clone() for n, p in policy.named_parameters()}
    theta = [p.clone() for p in trainable]
    opt = torch.optim.Adam(trainable, lr=1e-2)
    obs = observations(16)
    actions = torch.rand(16, ACT_DIM, generator=torch.Generator().manual_seed(2)) * 2 - 1
    for step in range(2):
        terms = composer.loss(obs, actions, torch.rand(16), torch.Generator().manual_seed(step))
        assert set(terms) >= {"loss", "mse"}
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
    for name, p in policy.named_parameters():
        assert p.grad is None, name
        assert torch.equal(p, frozen[name]), name
    assert any(not torch.equal(p, before) for p, before in zip(trainable, theta))


def test_any_number_of_skills():
    policy = tiny_policy()
    names = [f"s{i}" for i in range(6)]
    for i, name in enumerate(names):
        add_trained_looking_skill(policy, name, seed=i)
    obs = observations(4)
    alone = policy.sample(obs, torch.Generator().manual_seed(0))
    for mode in ["parameter", "noise", "action", "fixed"]:
        composer = Composer(policy, names, mode, AlphaConfig(output="sigmoid", init="uniform"))
        assert composer.alpha(obs).shape == (4, 6)
        actions = composer.sample(obs, torch.Generator().manual_seed(0))
        # all six skills at 1/6 each: not the base's actions
        assert actions.shape == (4, ACT_DIM) and not torch.allclose(actions, alone), mode


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (AlphaConfig(output="raw", init="uniform"), [1 / 3] * 3),
        (AlphaConfig(output="raw", init="newest", scale=2.0), [0.0, 0.0, 2.0]),
        (AlphaConfig(output="raw", init="zero"), [0.0] * 3),
        (AlphaConfig(output="softmax", init="uniform"), [1 / 3] * 3),
        (AlphaConfig(output="softmax", init="newest"), [0.005, 0.005, 0.99]),
        (AlphaConfig(output="sigmoid", init="uniform"), [1 / 3] * 3),
        (AlphaConfig(output="sigmoid", init="newest"), [0.01, 0.01, 0.99]),
        (AlphaConfig(output="sigmoid", init="zero"), [0.01] * 3),
    ],
)
def test_alpha_initialisation(config, expected):
    policy = policy_with_skills()
    for mode in ["parameter", "fixed"]:
        alpha = Composer(policy, SKILLS, mode, config).alpha(observations(7))
        torch.testing.assert_close(alpha, torch.tensor(expected).expand(7, -1), rtol=1e-4, atol=1e-4)


def test_composer_errors():
    policy = policy_with_skills()
    with pytest.raises(StoreError, match="unknown skills"):
        Composer(policy, ["a", "zzz"])
    with pytest.raises(SpecError, match="^mode:"):
        Composer(policy, ["a"], mode="weights")
    with pytest.raises(SpecError, match="^skills:"):
        Composer(policy, ["a", "a"])
    with pytest.raises(SpecError, match="^skills:"):
        Composer(policy, [])
    with pytest.raises(SpecError, match="^alpha.init:"):
        AlphaConfig(output="softmax", init="zero")
    with pytest.raises(SpecError, match="^alpha.scale:"):
        AlphaConfig(scale=0.0)
    with pytest.raises(SpecError, match="^alpha.depth: unknown"):
        AlphaConfig.from_dict({"depth": 3})


def test_official_alpha_units_move_alpha_a_sixteenth_as_far_per_adam_step():
    """`scale: 1/16` is the official parameterisation (the network outputs 16 for a skill
    at full strength): from the same start and the same gradients' signs, one Adam step
    moves α 1/16 as far as in our units (docs/DEVIATIONS.md, "α units")."""
    policy = policy_with_skills()
    obs = observations(16)
    actions = torch.rand(16, ACT_DIM, generator=torch.Generator().manual_seed(2)) * 2 - 1
    moved = {}
    for scale in (1.0, 1 / 16):
        composer = Composer(policy, ["base", "b"], "parameter",
                            AlphaConfig(init="zero", reg=0.0, scale=scale),
                            torch.Generator().manual_seed(0))
        assert torch.equal(composer.alpha(obs), torch.zeros(16, 1))  # the base alone
        opt = torch.optim.Adam([p for p in composer.parameters() if p.requires_grad], lr=1e-3)
        terms = composer.loss(obs, actions, torch.rand(16, generator=torch.Generator().manual_seed(3)),
                              torch.Generator().manual_seed(4))
        opt.zero_grad()
        terms["loss"].backward()
        opt.step()
        moved[scale] = composer.alpha(obs).detach()
    assert moved[1.0].abs().min() > 0
    torch.testing.assert_close(moved[1 / 16], moved[1.0] / 16)
