"""Forgetting is zero by construction: a skill's outputs never change once it is trained.

The skills go through the code path the pipeline's fit stage uses (library.learners and
library.training, then library.serialization into a SkillStore and back): a base is
trained, then skills one after another, each on its own data. After every later skill
is added and trained, and after a store round trip, every earlier skill's noise
predictions and samples (fixed generators) equal those recorded right after its own
training, bit for bit.
"""

import numpy as np
import pytest
import torch
from learning_toys import toy_data

from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.learners import BaseLearner, SkillLearner
from library.lora import use_skills
from library.serialization import dump_base, dump_skill, load_base, load_skill
from library.store import SkillStore
from library.training import train

torch.set_num_threads(1)

OBS_DIM, ACT_DIM = 4, 2
SKILLS = ["reach", "push", "pull"]


def task_data(seed: int):
    """A task of its own: actions a fixed, task-specific function of the state."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.0, 1.0, (256, OBS_DIM))
    weights = rng.normal(0.0, 1.0, (OBS_DIM, ACT_DIM))
    return toy_data(obs, np.tanh(obs @ weights))


def outputs(policy: DiffusionPolicy, skill: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise predictions [B, A], samples [B, A]) of one skill (None: the base alone) on
    fixed states, noisy actions, steps and sampling generator."""
    g = torch.Generator().manual_seed(123)
    obs = torch.randn(16, OBS_DIM, generator=g)
    a_t = torch.randn(16, ACT_DIM, generator=g)
    t = torch.randint(1, policy.config.T + 1, (16,), generator=g)
    active = [] if skill is None else [skill]
    with torch.no_grad(), use_skills(policy, active):
        eps = policy.net(a_t, policy.normalizer(obs), t)
        actions = policy.sample(obs, generator=torch.Generator().manual_seed(7))
    return eps, actions


def assert_identical(got, expected, what: str) -> None:
    for name, a, b in zip(("noise prediction", "sample"), got, expected):
        assert torch.equal(a, b), f"{what}: {name} changed"


@pytest.fixture(scope="module")
def continual_run():
    """Base, then the skills in order; each skill's outputs recorded right after its fit
    and the policy's state after the last one."""
    base_data = task_data(0)
    policy = DiffusionPolicy(PolicyConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM, hidden=32),
                             StateNormalizer.from_data(base_data.obs))
    train(BaseLearner(policy), base_data, steps=30, batch_size=32, lr=1e-3, seed=0)
    recorded = {None: outputs(policy, None)}
    for index, name in enumerate(SKILLS):
        learner = SkillLearner(policy, name, rank=4, alpha=8.0,
                               generator=torch.Generator().manual_seed(index))
        train(learner, task_data(index + 1), steps=30, batch_size=32, lr=1e-2, seed=index)
        recorded[name] = outputs(policy, name)
        # Every earlier skill (and the base) is exactly as it was when it was trained.
        for earlier in [None, *SKILLS[:index]]:
            assert_identical(outputs(policy, earlier), recorded[earlier],
                             f"{earlier or 'base'} after training {name}")
    return policy, recorded


def test_training_later_skills_changes_no_earlier_output(continual_run):
    policy, recorded = continual_run
    # The skills did learn: each one's outputs differ from the base's.
    for name in SKILLS:
        assert not torch.equal(recorded[name][0], recorded[None][0])
    for earlier in [None, *SKILLS]:
        assert_identical(outputs(policy, earlier), recorded[earlier], str(earlier))


def test_outputs_survive_a_store_round_trip(continual_run, tmp_path):
    policy, recorded = continual_run
    store = SkillStore(str(tmp_path / "store"))
    config, tensors = dump_base(policy)
    store.register("mw-base", "base", config, tensors)
    for name in SKILLS:
        config, tensors = dump_skill(policy, name, base_name="mw-base")
        store.register(name, "skill", config, tensors, parent="mw-base")
    loaded = load_base(*store.load("mw-base"))
    assert_identical(outputs(loaded, None), recorded[None], "base after load")
    # Load the skills newest first, so each earlier one joins a policy that already
    # holds the later ones.
    for name in reversed(SKILLS):
        load_skill(loaded, name, *store.load(name))
    for name in SKILLS:
        assert_identical(outputs(loaded, name), recorded[name], f"{name} after load")
