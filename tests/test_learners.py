"""Learners and the training loop: what trains, what stays frozen, resuming, callbacks."""

import copy

import numpy as np
import pytest
import torch
from learning_toys import toy_data

from library.composition import AlphaConfig, Composer
from library.critics import CriticConfig, FeasibilityConfig, FeasibilityCritic, IQLCritics
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.errors import DataError, ShapeError, SpecError, TrainingDiverged
from library.learners import (
    BaseLearner,
    ComposerLearner,
    CriticLearner,
    SkillLearner,
    StackedSkillLearner,
)
from library.lora import add_skill, lora_layers
from library.training import cosine_lr, train

torch.set_num_threads(1)
S, A = 3, 2


def random_data(n: int = 512, seed: int = 0, obs_dim: int = S):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim))
    return toy_data(
        obs, rng.uniform(-1, 1, (n, A)), next_obs=obs + 0.1, rewards=rng.normal(size=n),
        costs=rng.random(n) < 0.2, terminals=rng.random(n) < 0.1,
    )


def small_policy(seed: int = 0, dropout: float = 0.0) -> DiffusionPolicy:
    torch.manual_seed(seed)
    norm = StateNormalizer.from_data(random_data().obs)
    return DiffusionPolicy(PolicyConfig(obs_dim=S, act_dim=A, hidden=16, n_blocks=1,
                                        dropout=dropout), norm)


def with_old_skill(policy: DiffusionPolicy) -> DiffusionPolicy:
    """The policy plus a stored skill "old" with non-zero weights."""
    add_skill(policy, "old", rank=2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            layer.lora_B["old"].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    return policy


def small_critics():
    norm = StateNormalizer.from_data(random_data().obs)
    torch.manual_seed(0)
    return (
        IQLCritics(CriticConfig(obs_dim=S, act_dim=A, hidden=16), norm),
        FeasibilityCritic(FeasibilityConfig(obs_dim=S, act_dim=A, hidden=16), norm),
    )


# Each factory builds a fresh learner from identical starting weights.
LEARNERS = {
    "critic": lambda: CriticLearner(*small_critics()),
    "base": lambda: BaseLearner(small_policy()),
    "base-advantage": lambda: BaseLearner(small_policy(), "reward+feasibility", *small_critics()),
    "skill": lambda: SkillLearner(
        with_old_skill(small_policy()), "new", rank=2, generator=torch.Generator().manual_seed(3)
    ),
    "composer": lambda: ComposerLearner(
        Composer(with_old_skill(small_policy()), ["base", "old"], "parameter", AlphaConfig(hidden=8),
                 generator=torch.Generator().manual_seed(4))
    ),
    "composer-fixed": lambda: ComposerLearner(Composer(with_old_skill(small_policy()), ["old"], "fixed")),
    "composer-action-pool": lambda: ComposerLearner(
        Composer(with_old_skill(small_policy()), ["base", "old"], "action", AlphaConfig(hidden=8),
                 generator=torch.Generator().manual_seed(4)), action_draws=2),
}


@pytest.mark.parametrize("kind", sorted(LEARNERS))
def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(kind):
    data = random_data()
    run = {"batch_size": 32, "lr": 3e-3, "seed": 7, "log_every": 5, "lr_decay_steps": 20}
    whole = LEARNERS[kind]()
    checkpoints = []
    train(whole, data, steps=12, on_checkpoint=checkpoints.append, checkpoint_every=5, **run)
    assert [c.step for c in checkpoints] == [5, 10, 12]

    resumed = LEARNERS[kind]()
    resumed.load_state_dict(checkpoints[0].learner_state)
    torch.manual_seed(999)  # as in a fresh process: the run must not depend on global RNG state
    result = train(resumed, data, steps=12, start_step=5,
                   optimizer_state=checkpoints[0].optimizer_state, **run)
    assert result.steps == 12
    final, again = whole.state_dict(), resumed.state_dict()
    assert final.keys() == again.keys()
    for key in final:
        assert torch.equal(final[key], again[key]), key
    # The checkpoint is a snapshot: later steps did not change it.
    assert any(not torch.equal(checkpoints[0].learner_state[k], final[k]) for k in final)


def test_skill_learner_trains_its_skill_only():
    policy = with_old_skill(small_policy())
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    learner = SkillLearner(policy, "new", rank=2)
    assert learner.parameters() and all(".new." in n for n in learner.state_dict())
    train(learner, random_data(), steps=5, batch_size=32, lr=1e-2, seed=0)
    after = policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set()  # the base and "old" bit for bit
    assert any(".lora_B.new." in k and v.abs().sum() > 0 for k, v in after.items())


def test_composer_learner_trains_alpha_only():
    policy = with_old_skill(small_policy())
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    learner = ComposerLearner(Composer(policy, ["base", "old"], "parameter", AlphaConfig(hidden=8)))
    assert all(k.startswith("context.") for k in learner.state_dict())
    theta = copy.deepcopy(learner.state_dict())
    result = train(learner, random_data(), steps=5, batch_size=32, lr=1e-2, seed=0)
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
    assert any(not torch.equal(theta[k], v) for k, v in learner.state_dict().items())
    assert "alpha/old" in result.terms and "alpha/base" not in result.terms  # W0 has no weight


def test_weighted_learner_freezes_its_critics():
    iql, feas = small_critics()
    learner = BaseLearner(small_policy(), "reward+feasibility", iql, feas)
    critic_params = [p for critic in (iql, feas) for p in critic.parameters()]
    assert not any(p.requires_grad for p in critic_params)
    assert not {id(p) for p in critic_params} & {id(p) for p in learner.parameters()}
    result = train(learner, random_data(), steps=3, batch_size=32, lr=1e-3, seed=0)
    assert {"loss", "mse", "weight_mean", "weight_max"} <= result.terms.keys()


def test_critic_learner_updates_targets_after_each_step():
    iql, _ = small_critics()
    learner = CriticLearner(iql=iql)
    target = [p.clone() for p in iql.target_q_nets.parameters()]
    assert not {id(p) for p in iql.target_q_nets.parameters()} & {id(p) for p in learner.parameters()}
    result = train(learner, random_data(), steps=2, batch_size=32, lr=1e-3, seed=0)
    assert any(not torch.equal(a, b) for a, b in zip(target, iql.target_q_nets.parameters()))
    assert {"loss", "iql/v_loss", "iql/q_loss"} <= result.terms.keys()


def test_callbacks_logging_and_grad_hook():
    logged, hooked = [], []

    def zero_grads(params):  # what an all-reduce would do, here: cancel every gradient
        hooked.append(len(params))
        for p in params:
            p.grad.zero_()

    learner = BaseLearner(small_policy())
    before = copy.deepcopy(learner.state_dict())
    result = train(learner, random_data(), steps=7, batch_size=16, lr=1e-2, seed=0, log_every=3,
                   on_step=lambda step, terms: logged.append((step, terms)), grad_hook=zero_grads)
    assert [step for step, _ in logged] == [3, 6, 7] == [step for step, _ in result.history]
    assert all(isinstance(v, float) for _, terms in logged for v in terms.values())
    assert hooked == [len(learner.parameters())] * 7
    # The hook ran between backward and the optimiser step: with zero gradients Adam stays put.
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    def fitted(seed):
        learner = BaseLearner(small_policy())
        train(learner, random_data(), steps=3, batch_size=16, lr=1e-2, seed=seed)
        return learner.state_dict()["net.output.weight"]

    assert torch.equal(fitted(0), fitted(0))
    assert not torch.equal(fitted(0), fitted(1))
    learner = BaseLearner(small_policy())
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(learner, random_data(), steps=2, batch_size=16, lr=1e-2, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_bad_inputs_raise_one_line_errors():
    learner = BaseLearner(small_policy())
    with pytest.raises(ShapeError, match=r"dataset has obs/act dims \(4, 2\).*\(3, 2\)"):
        train(learner, random_data(obs_dim=4), steps=1, batch_size=8, lr=1e-3, seed=0)
    with pytest.raises(SpecError, match="train.steps"):
        train(learner, random_data(), steps=0, batch_size=8, lr=1e-3, seed=0)
    with pytest.raises(SpecError, match="train.start_step"):
        train(learner, random_data(), steps=2, batch_size=8, lr=1e-3, seed=0, start_step=3)
    with pytest.raises(SpecError, match="train.lr"):
        train(learner, random_data(), steps=2, batch_size=8, lr=0.0, seed=0)
    with pytest.raises(ShapeError, match="checkpoint does not match"):
        learner.load_state_dict({"nonsense": torch.zeros(1)})
    critic_run = train(CriticLearner(*small_critics()), random_data(), steps=1, batch_size=8, lr=1e-3, seed=0)
    with pytest.raises(ShapeError, match="optimizer checkpoint does not match"):
        train(learner, random_data(), steps=2, batch_size=8, lr=1e-3, seed=0, start_step=1,
              optimizer_state=critic_run.optimizer_state)
    with pytest.raises(DataError, match="training diverged: the loss is (nan|inf) by step"):
        train(learner, random_data(), steps=20, batch_size=8, lr=1e30, seed=0, log_every=1)
    # Between two loss checks, no checkpoint of non-finite weights is ever taken.
    taken = []
    with pytest.raises(TrainingDiverged, match="the weights are not finite") as diverged:
        train(LEARNERS["base"](), random_data(), steps=20, batch_size=8, lr=1e30, seed=0,
              log_every=20, checkpoint_every=1, on_checkpoint=taken.append)
    assert taken and all(c.step < diverged.value.step for c in taken)
    assert all(torch.isfinite(t).all() for c in taken for t in c.learner_state.values())


@pytest.mark.parametrize("kind", ["base", "skill"])
def test_the_ema_follows_every_step_from_the_initial_weights(kind):
    learner = LEARNERS[kind]()
    assert learner.ema_rate == 1e-3  # the official rate, on by default for policies
    learner.ema_rate = 0.25
    names = list(learner._trainable)
    start = {n: p.detach().clone() for n, p in learner._trainable.items()}
    expected = dict(start)
    for step in range(3):
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(1.0 + step)
        learner.after_step()
        expected = {n: expected[n] + 0.25 * (learner._trainable[n] - expected[n]) for n in names}
    last = {n: p.detach().clone() for n, p in learner._trainable.items()}
    with learner.ema_weights():
        for n in names:
            torch.testing.assert_close(learner._trainable[n].detach(), expected[n])
            assert not torch.equal(learner._trainable[n], last[n])
    for n in names:  # the last iterate is back
        assert torch.equal(learner._trainable[n], last[n])
    assert any(k.startswith("ema/") for k in learner.state_dict())


def test_a_composer_and_a_learner_with_rate_0_have_no_ema():
    composer = LEARNERS["composer"]()
    base = BaseLearner(small_policy(), ema_rate=0.0)
    for learner in (composer, base):
        assert not any(k.startswith("ema/") for k in learner.state_dict())
        before = {k: v.clone() for k, v in learner.state_dict().items()}
        with learner.ema_weights():
            assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())
    with pytest.raises(SpecError, match="train.ema"):
        BaseLearner(small_policy(), ema_rate=1.5)


def test_the_cosine_schedule_sets_the_rate_of_every_step():
    assert cosine_lr(3e-4, 0, 10) == 3e-4
    assert cosine_lr(3e-4, 5, 10) == pytest.approx(1.5e-4)
    assert cosine_lr(3e-4, 10, 10) == cosine_lr(3e-4, 25, 10) == 0.0
    # A one-step horizon: every step after the first runs at rate 0, so 1 step and 6 steps
    # end at the same weights (the EMA still moves: it is not a step of the optimiser).
    data = random_data()
    ends = []
    for steps in (1, 6):
        learner = BaseLearner(small_policy(), ema_rate=0.0)
        train(learner, data, steps=steps, batch_size=32, lr=1e-2, seed=0, lr_decay_steps=1)
        ends.append(learner.state_dict())
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])
    learner = BaseLearner(small_policy(), ema_rate=0.0)
    train(learner, data, steps=6, batch_size=32, lr=1e-2, seed=0)
    assert any(not torch.equal(ends[0][k], v) for k, v in learner.state_dict().items())


@pytest.mark.parametrize("weighting", ["advantage", "feasibility", "reward+feasibility"])
def test_a_datasets_weights_are_tabled_once_and_give_what_weighing_each_batch_gives(
        weighting, monkeypatch):
    def fit(tabled: bool):
        iql, feas = small_critics()
        learner = SkillLearner(with_old_skill(small_policy()), "new", rank=2,
                               generator=torch.Generator().manual_seed(3),
                               weighting=weighting, iql=iql, feasibility=feas)
        if not tabled:
            monkeypatch.setattr(learner, "weight_table", lambda data, device: None)
        passes = []
        weigh = learner.weigh
        learner.weigh = lambda batch: passes.append(len(batch["obs"])) or weigh(batch)
        result = train(learner, data, steps=6, batch_size=64, lr=1e-3, seed=0, log_every=1)
        return learner, passes, result

    data = random_data(n=300)
    tabled, passes, result = fit(tabled=True)
    assert passes == [300]  # the whole dataset, once; no critic pass per step
    per_batch, batch_passes, expected = fit(tabled=False)
    assert batch_passes == [64] * 6
    for key in ("weight_mean", "weight_max", "loss"):
        assert result.terms[key] == pytest.approx(expected.terms[key], rel=1e-6)
    for name, value in tabled.state_dict().items():
        torch.testing.assert_close(value, per_batch.state_dict()[name], rtol=1e-5, atol=1e-7)
    # Another dataset gets its own table; a loss outside a step weighs its batch itself.
    other = random_data(n=200, seed=1)
    table = tabled.weight_table(other, torch.device("cpu"))
    assert passes == [300, 200] and table.shape == (200,)
    batch = {k: v[:5] for k, v in other.sample(5, torch.Generator().manual_seed(0)).items()}
    tabled.loss(batch)
    assert passes == [300, 200, 5]


def test_the_weights_effective_sample_size_is_logged():
    from library.weighting import effective_sample_size

    assert effective_sample_size(torch.ones(4)).item() == 1.0
    assert effective_sample_size(torch.tensor([3.0, 0.0, 0.0, 0.0])).item() == 0.25
    assert effective_sample_size(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == 0.5
    result = train(LEARNERS["skill"](), random_data(), steps=2, batch_size=32, lr=1e-3, seed=0)
    assert result.terms["weight_ess"] == 1.0  # bc: every sample counts


def test_after_step_sees_every_step_done_after_its_update():
    data = random_data()
    learner = BaseLearner(small_policy())
    seen = []

    def after_step(done):
        # Called after the update of step `done`: the weights have moved by then.
        seen.append((done, float(next(learner.policy.parameters()).detach().sum())))

    train(learner, data, steps=7, batch_size=32, lr=1e-2, seed=0, log_every=5,
          start_step=2, after_step=after_step)
    assert [done for done, _ in seen] == [3, 4, 5, 6, 7]
    sums = [total for _, total in seen]
    assert all(a != b for a, b in zip(sums, sums[1:]))


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_stacked_skills_train_as_each_would_alone(dropout):
    """Two skills fitted at once, as one batched computation, end where each ends fitted
    alone on its own data with its own seed (same batches and noise, the same gradients to
    float rounding), EMA included; the base and the stored skill do not move."""
    datas, seeds = [random_data(seed=10), random_data(seed=11)], [5, 6]
    run = {"steps": 15, "batch_size": 32, "lr": 3e-3, "log_every": 5, "lr_decay_steps": 20}

    def policy():
        return with_old_skill(small_policy(dropout=dropout))

    def init(j):
        return torch.Generator().manual_seed(20 + j)

    alone, losses = [], []
    for j in range(2):
        learner = SkillLearner(policy(), f"s{j}", rank=2, generator=init(j))
        result = train(learner, datas[j], seed=seeds[j], **run)
        alone.append(learner.state_dict())
        losses.append([terms["loss"] for _, terms in result.history])

    stacked = StackedSkillLearner(policy(), ["s0", "s1"], rank=2, generators=[init(0), init(1)])
    untouched = {n: p.detach().clone() for n, p in stacked.policy.named_parameters()
                 if ".s0." not in n and ".s1." not in n}
    result = train(stacked, datas, seed=seeds, **run)
    state = stacked.state_dict()
    assert set(state) == set(alone[0]) | set(alone[1])
    for own in alone:
        for key, value in own.items():
            torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-6)
    for j in range(2):
        assert [terms[f"s{j}/loss"] for _, terms in result.history] == pytest.approx(
            losses[j], rel=1e-5)
    for name, p in stacked.policy.named_parameters():
        if name in untouched:
            assert torch.equal(p, untouched[name]), name
    assert result.history[-1][1]["loss"] == pytest.approx(
        sum(result.history[-1][1][f"s{j}/loss"] for j in range(2)))


def test_stacked_skills_need_one_dataset_and_seed_per_skill():
    stacked = StackedSkillLearner(small_policy(), ["a", "b"], rank=2)
    with pytest.raises(SpecError, match="one dataset and one seed per skill"):
        train(stacked, [random_data()], steps=1, batch_size=8, lr=1e-3, seed=[0])
    with pytest.raises(SpecError, match="distinct names"):
        StackedSkillLearner(small_policy(), ["a", "a"])


def test_an_action_pool_is_drawn_once_from_the_seed_and_the_loss_composes_its_draws():
    data = random_data()
    learner = LEARNERS["composer-action-pool"]()
    train(learner, data, steps=3, batch_size=16, lr=1e-3, seed=5)
    pool = learner.pool.actions
    k = len(learner.composer.skills)
    assert pool.shape == (k, 2, len(data), data.act_dim)
    # The same pool from the seed alone, whoever asks: a resumed run draws it again.
    again = learner.composer.action_pool(data.obs, 2, seed=5)
    assert torch.equal(again.actions, pool)
    assert not torch.equal(pool[:, 0], pool[:, 1])  # two draws, not one twice
    # The loss is the action mode's, on one of each state's pooled draws.
    batch = data.sample(16, torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    picked = learner.pool.pick(batch["index"])
    torch.manual_seed(1)
    terms = learner.loss(batch)
    alpha = learner.composer.alpha(batch["obs"]).detach()
    composed = torch.einsum("bk,kba->ba", alpha, picked)
    mse = (composed - batch["actions"]).pow(2).mean()
    torch.testing.assert_close(terms["mse"], mse)
    assert all(any(torch.equal(picked[:, j], pool[:, d, i]) for d in range(2))
               for j, i in enumerate(batch["index"].tolist()))


def test_only_an_action_composer_pools_skill_actions():
    composer = Composer(with_old_skill(small_policy()), ["base", "old"], "noise")
    with pytest.raises(SpecError, match="action_draws.*'noise'"):
        ComposerLearner(composer, action_draws=4)
    with pytest.raises(SpecError, match="skill_actions"):
        composer.loss(torch.zeros(2, S), torch.zeros(2, A),
                      skill_actions=torch.zeros(2, 2, A))
