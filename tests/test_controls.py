"""The controls a composition claim is made against (docs/ARCHITECTURE.md, "Composition claims"):
uniform α as an untrained composer, a random-LoRA bank of the stored skills' norms, the
α regulariser, and the pipeline pieces searches use (result tags, skills shared across
methods, stored composers loaded by name). No Ray: stages run on a plain store."""

import pyarrow as pa
import pytest
import torch
from library_builders import ACT_DIM, add_trained_looking_skill, observations, tiny_policy
from pipeline_builders import PlainStore, stand_base_with_walk_skill, tiny_task

from library.composition import AlphaConfig, Composer
from library.errors import SpecError, StoreError
from library.learners import ComposerLearner
from library.lora import add_random_skill, lora_layers, use_skills
from library.serialization import dump_skill, load_base, split_item
from library.store import SkillStore
from pipeline.acting import load_acting, load_composer
from pipeline.checks import check_plan
from pipeline.plan import plan_task
from pipeline.results import ResultRow, now
from pipeline.stages import UnitContext, random_skill_name
from tasks.spec import parse_stream, parse_task

torch.set_num_threads(1)


# ------------------------------------------------------------------ library


def test_uniform_alpha_is_exactly_uniform_over_the_skills_and_reg_0_turns_the_pull_off():
    policy = tiny_policy()
    for index, name in enumerate(("a", "b", "c")):
        add_trained_looking_skill(policy, name, seed=index)
    composer = Composer(policy, ["base", "a", "b", "c"], "fixed",
                        AlphaConfig(output="raw", init="uniform", reg=0.0))
    obs = observations(8)
    assert torch.equal(composer.alpha(obs), torch.full((8, 3), 1 / 3))  # no weight on W0
    terms = composer.loss(obs, torch.zeros(8, ACT_DIM))
    assert terms["alpha_reg"].item() == 0.0


def test_the_regulariser_is_in_the_loss_and_pulls_the_new_skill_to_full_strength():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "a", seed=0)
    add_trained_looking_skill(policy, "b", seed=1)
    obs, actions = observations(16), torch.zeros(16, ACT_DIM)
    plain = Composer(policy, ["a", "b"], "fixed", AlphaConfig(reg=0.0))
    pulled = Composer(policy, ["a", "b"], "fixed", AlphaConfig(reg=2.0))
    with torch.no_grad():
        for composer in (plain, pulled):
            composer.logits.copy_(torch.tensor([0.5, 1.5]))  # start was [0, 1]
    base_terms = plain.loss(obs, actions, generator=torch.Generator().manual_seed(0))
    terms = pulled.loss(obs, actions, generator=torch.Generator().manual_seed(0))
    expected = 2.0 * 256 / ACT_DIM * ((1.0 - 0.5) ** 2 + (1.5 - 1.0) ** 2)
    assert terms["alpha_reg"].item() == pytest.approx(expected)
    assert terms["loss"].item() == pytest.approx(base_terms["loss"].item() + expected, rel=1e-5)
    terms["loss"].backward()
    assert pulled.logits.grad[1] > 0  # the new skill's weight is pushed back down toward 1
    with pytest.raises(SpecError, match="alpha.reg"):
        AlphaConfig(reg=-1.0)


def test_a_random_skill_has_the_reference_norms_and_acts_differently():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "walk", seed=3)
    add_random_skill(policy, "noise", like="walk", generator=torch.Generator().manual_seed(0))
    for layer in lora_layers(policy).values():
        assert layer.adapters["noise"] == layer.adapters["walk"]
        for part in (layer.lora_A, layer.lora_B):
            assert part["noise"].weight.norm().item() == pytest.approx(
                part["walk"].weight.norm().item(), rel=1e-5)
            assert not torch.allclose(part["noise"].weight, part["walk"].weight)
    obs, a_t, t = observations(4), torch.zeros(4, ACT_DIM), torch.ones(4, dtype=torch.long)
    s_norm = policy.normalizer(obs)
    with torch.no_grad(), use_skills(policy, ["walk"]):
        real = policy.net(a_t, s_norm, t)
    with torch.no_grad(), use_skills(policy, ["noise"]):
        fake = policy.net(a_t, s_norm, t)
    assert not torch.allclose(real, fake, atol=1e-4)
    with pytest.raises(StoreError, match="unknown skill"):
        add_random_skill(policy, "other", like="missing")


def test_a_random_full_rank_skill_matches_the_delta_norm():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "walk", seed=3, kind="full")
    add_random_skill(policy, "noise", like="walk", generator=torch.Generator().manual_seed(0))
    for layer in lora_layers(policy).values():
        assert layer.full_delta["noise"].weight.norm().item() == pytest.approx(
            layer.full_delta["walk"].weight.norm().item(), rel=1e-5)


# ------------------------------------------------------------------ spec


def test_an_untrained_composer_stays_untrained_at_every_scale():
    stream = parse_stream({
        "name": "s", "tasks": [
            tiny_task("stand", role="base"),
            tiny_task("walk"),
            tiny_task("run", composers=[
                {"name": "uniform", "skills": ["walk"], "mode": "fixed", "steps": 0},
                {"name": "noise", "skills": ["base", "walk"], "bank": "random"}])],
        "scales": {"smoke": {"composer_steps": 3}, "paper": {}}})
    uniform, noise = stream.at_scale("smoke").tasks[2].composers
    assert uniform.steps == 0 and noise.steps == 3 and noise.bank == "random"


# ------------------------------------------------------------------ pipeline, no Ray


@pytest.fixture
def walker_store(tmp_path):
    """A base `stand` and a trained-looking rank-4 skill `walk` on it, and run's data."""
    tasks = [tiny_task("stand", role="base"), tiny_task("walk"), tiny_task("run")]
    walk = parse_task({**tiny_task("walk"), "base": "stand"})
    return stand_base_with_walk_skill(str(tmp_path / "store"), tasks, store_class=PlainStore,
                                      walk_spec=walk.model_dump(mode="json"))


def _fit_composers(store, task):
    """What a fit unit does for `task`'s stages, with zero-step composers (no training)."""
    plan = plan_task(task, ["stand"])
    (unit,) = plan.units.values()
    context = UnitContext(store, unit, torch.device("cpu"))
    for stage in unit.stages:
        learner = context.build(stage)
        context.register(stage, learner, {"train_steps": stage.steps})
    return plan


def test_an_untrained_uniform_composer_and_a_random_bank_reach_the_store(walker_store):
    task = parse_task({**tiny_task("run", composers=[
        {"name": "uniform", "skills": ["base", "walk"], "mode": "fixed", "steps": 0,
         "alpha": {"output": "raw", "init": "uniform"}},
        {"name": "noise", "skills": ["base", "walk"], "steps": 0, "bank": "random"}]),
        "base": "stand"})
    _fit_composers(walker_store, task)
    obs = torch.randn(5, 24)
    uniform = load_composer(walker_store, "uniform")
    assert torch.equal(uniform.alpha(obs), torch.full((5, 2), 1 / 2))  # walk, run
    noise = load_composer(walker_store, "noise")
    stand_in = random_skill_name("noise", "walk")
    assert noise.skills == [stand_in, "run"]  # a parameter-level composer: W0 needs no weight
    entry = walker_store.entry(stand_in)
    assert entry.kind == "skill" and entry.parent == "stand"
    assert entry.metrics["random_like"] == "walk"
    real_layers = lora_layers(load_composer(walker_store, "uniform").policy)
    for path, layer in lora_layers(noise.policy).items():
        real = real_layers[path]
        for part in ("lora_A", "lora_B"):
            fake = getattr(layer, part)[stand_in].weight
            true = getattr(real, part)["walk"].weight
            assert fake.norm().item() == pytest.approx(true.norm().item(), rel=1e-5)
            assert not torch.allclose(fake, true)
    act = load_acting(walker_store, "noise")
    assert act(obs[0].numpy()).shape == (6,)
    with pytest.raises(StoreError, match="not a composer"):
        load_composer(walker_store, "walk")


def test_an_untrained_composer_learner_has_nothing_to_train_toward_but_its_start(walker_store):
    task = parse_task({**tiny_task("run", composers=[
        {"name": "uniform", "skills": ["walk"], "mode": "fixed", "steps": 0,
         "alpha": {"init": "uniform"}}]),
        "base": "stand"})
    plan = plan_task(task, ["stand"])
    context = UnitContext(walker_store, next(iter(plan.units.values())), torch.device("cpu"))
    skill_stage, composer_stage = plan.units["run"].stages
    context.register(skill_stage, context.build(skill_stage), {})
    learner = context.build(composer_stage)
    assert isinstance(learner, ComposerLearner) and composer_stage.steps == 0
    before = learner.composer.alpha(torch.randn(2, 24)).clone()
    context.register(composer_stage, learner, {})
    after = load_composer(walker_store, "uniform").alpha(torch.randn(2, 24))
    assert torch.equal(before, after) and torch.equal(after, torch.full((2, 2), 0.5))


def test_tasks_that_differ_only_in_composers_and_eval_share_their_skill(walker_store):
    psec = parse_task({**tiny_task("run", composers=[{"name": "c_psec", "skills": ["walk"]}]),
                       "base": "stand"})
    walker_store.register("run", "skill", *dump_skill(_skill_policy(walker_store), "run",
                                                      base_name="stand"),
                          parent="stand", task_spec=psec.model_dump(mode="json"))
    fixed = parse_task({**tiny_task("run", composers=[
        {"name": "c_fixed", "skills": ["walk"], "mode": "fixed"}]), "base": "stand",
        "eval": {"episodes": 3, "seeds": [0, 1]}})
    check_plan(plan_task(fixed, ["stand"]), walker_store)  # the skill is shared
    longer = parse_task({**tiny_task("run", steps=99), "base": "stand"})
    with pytest.raises(StoreError, match="different spec"):
        check_plan(plan_task(longer, ["stand"]), walker_store)
    # A composer must match its own spec.
    walker_store.register("c_fixed", "composer", {"kind": "composer"}, {"x": torch.zeros(1)},
                          parent="stand", task_spec=fixed.model_dump(mode="json"))
    other = parse_task({**tiny_task("run", composers=[
        {"name": "c_fixed", "skills": ["walk"], "mode": "fixed", "steps": 5}]),
        "base": "stand"})
    with pytest.raises(StoreError, match="'c_fixed' is in the store"):
        check_plan(plan_task(other, ["stand"]), walker_store)


def _skill_policy(store):
    config, tensors = store.load("stand")
    policy = load_base(config, split_item(tensors)[0])
    add_trained_looking_skill(policy, "run", seed=9)
    return policy


def test_result_tags_land_in_the_results_table(tmp_path):
    store = SkillStore(str(tmp_path / "store"))

    def row(**tags):
        return ResultRow(stream="s", task="run", position=0, name="c", kind="composer",
                         method="psec", composer="c", skills=["walk", "run"], seed=0,
                         eval_task="run", episodes=1, return_mean=1.0, return_std=0.0,
                         score=0.5, success=0.0, cost=0.0, steps=1, wall_s=0.1,
                         scale="smoke", time=now(), **tags).model_dump(mode="json")

    store.append_results([row()])  # an untagged row (as rows recorded before tags)
    store.append_results([row(search="alpha", trial="0123abcd")])
    table: pa.Table = store.results()
    assert table.column("search").to_pylist() == [None, "alpha"]
    assert table.column("trial").to_pylist() == [None, "0123abcd"]
