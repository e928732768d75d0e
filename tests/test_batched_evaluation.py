"""Episodes rolled out side by side are the episodes rolled out one at a time, bit for bit.

Evaluation steps all episodes of a chunk at once, with one batched policy call per env
step (`tasks.evaluation.rollout_batch`, `pipeline.acting.Acting.batch`). Two things make an
episode independent of the others in its batch: its sampling noise comes from its own
generator (`library.diffusion.Noise`), and every call is padded to `MIN_ROWS` rows, from
where the CPU GEMM computes a row the same way at any batch size. These tests hold both
paths to identical returns for the base, every composition mode and IDQL selection, on the
dm_control walker and on Meta-World.
"""

import gymnasium as gym
import numpy as np
import pytest
import torch
from library_builders import add_trained_looking_skill
from torch import nn

from library.composition import AlphaConfig, Composer
from library.diffusion import (
    DiffusionPolicy,
    PolicyConfig,
    StateNormalizer,
    select_action,
    standard_normal,
)
from library.errors import ShapeError
from pipeline.acting import MIN_ROWS, Acting
from tasks.evaluation import rollout, rollout_batch
from tasks.suites import get_suite

torch.set_num_threads(1)  # as in an evaluation's Ray task


def _policy(obs_dim: int, act_dim: int) -> DiffusionPolicy:
    """A base of the default shape (the kernels evaluation really runs), random weights."""
    torch.manual_seed(0)
    data = torch.randn(256, obs_dim, generator=torch.Generator().manual_seed(1))
    return DiffusionPolicy(PolicyConfig(obs_dim=obs_dim, act_dim=act_dim),
                           StateNormalizer.from_data(data)).eval()


def test_the_default_network_computes_a_row_the_same_at_any_batch_from_min_rows():
    policy = _policy(24, 6)
    g = torch.Generator().manual_seed(2)
    x, s = torch.randn(64, 6, generator=g), torch.randn(64, 24, generator=g)
    t = torch.randint(1, 6, (64,), generator=g)
    with torch.no_grad():
        reference = policy.net(x[:MIN_ROWS], s[:MIN_ROWS], t[:MIN_ROWS])
        for batch in (MIN_ROWS + 1, MIN_ROWS + 5, 30, 64):
            assert torch.equal(policy.net(x[:batch], s[:batch], t[:batch])[:MIN_ROWS], reference)
        order = torch.randperm(64, generator=g)  # a row's place in the batch does not matter
        shuffled = policy.net(x[order], s[order], t[order])
        assert torch.equal(shuffled[torch.argsort(order)][:MIN_ROWS], reference)


def test_per_block_generators_draw_what_each_would_draw_alone():
    like = torch.zeros(1)
    gens = [torch.Generator().manual_seed(seed) for seed in (5, 6, 7)]
    drawn = standard_normal((6, 4), gens, like)
    alone = [torch.randn((2, 4), generator=torch.Generator().manual_seed(seed)) for seed in (5, 6, 7)]
    assert torch.equal(drawn, torch.cat(alone))
    with pytest.raises(ShapeError, match="7 rows cannot be split among 3"):
        standard_normal((7, 4), gens, like)


def _acting(policy: DiffusionPolicy, mode: str | None, n_candidates: int = 1) -> Acting:
    """What `pipeline.acting.load_acting` builds, for an in-memory base or composer: walk
    and run are trained-looking skills, α(s) varies with the state."""
    sample_policy = policy.sample
    if mode is not None:
        add_trained_looking_skill(policy, "walk", seed=3)
        add_trained_looking_skill(policy, "run", seed=4)
        composer = Composer(policy, ["base", "walk", "run"], mode=mode,
                            alpha=AlphaConfig(init="uniform"),
                            generator=torch.Generator().manual_seed(5)).eval()
        if composer.context is not None:
            with torch.no_grad():  # a trained-looking context network: α moves with s
                composer.context.net[-1].weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(6))
        sample_policy = composer.sample
    critic = nn.Linear(policy.config.obs_dim + policy.config.act_dim, 1)
    nn.init.normal_(critic.weight, generator=torch.Generator().manual_seed(7))

    def q_fn(obs, actions):
        return critic(torch.cat([obs, actions], dim=-1)).squeeze(-1)

    def sample(batch, noise):
        return select_action(lambda o: sample_policy(o, noise), batch, n_candidates,
                             q_fn=q_fn if n_candidates > 1 else None)

    return Acting(sample, seed=0, rows_per_state=n_candidates)


def _fields(episodes) -> list[tuple]:
    """Everything an episode records but its score (NaN without a suite: NaN != NaN)."""
    return [(e.seed, e.episode_return, e.length, e.success, e.cost) for e in episodes]


def _both_ways(act: Acting, make_env, seeds: list[int], horizon: int):
    """(side by side, one at a time) episode fields of `act` on envs from `make_env`."""
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    together = rollout_batch([make_env() for _ in seeds],
                             lambda obs, live: act.batch(obs, [generators[i] for i in live]),
                             seeds, horizon)
    env, alone = make_env(), []
    for seed in seeds:
        act.reseed(seed)
        alone.extend(rollout(env, act, 1, seed, horizon))
    return _fields(together), _fields(alone)


@pytest.mark.parametrize(("mode", "n_candidates"), [
    (None, 1), ("parameter", 1), ("fixed", 1), ("noise", 1), ("action", 1), ("parameter", 4)])
def test_walker_episodes_side_by_side_equal_those_rolled_out_alone(mode, n_candidates):
    suite = get_suite("dmc")
    act = _acting(_policy(24, 6), mode, n_candidates)
    together, alone = _both_ways(act, lambda: suite.make_env("walker-walk", None, seed=0, horizon=1000),
                                 seeds=[11, 12, 13], horizon=25)
    assert together == alone
    assert len({episode[1] for episode in alone}) == 3  # three distinct episodes


def test_meta_world_episodes_side_by_side_equal_those_rolled_out_alone():
    suite = get_suite("metaworld")
    act = _acting(_policy(39, 4), "parameter")
    together, alone = _both_ways(act, lambda: suite.make_env("reach-v3", None, seed=0, horizon=500),
                                 seeds=[21, 22, 23], horizon=20)
    assert together == alone
    assert len({episode[1] for episode in alone}) == 3


class _Countdown(gym.Env):
    """Ends after 2 + seed % 4 steps; the observation counts the steps taken."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        self.left, self.taken = 2 + seed % 4, 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.left, self.taken = self.left - 1, self.taken + 1
        return (np.full(1, self.taken, np.float32), float(action[0]), self.left == 0, False,
                {"success": self.taken == 3})


def test_one_call_per_step_covers_exactly_the_episodes_still_running():
    calls = []

    def policy(obs, live):
        calls.append((list(live), obs[:, 0].tolist()))
        return np.full((len(live), 1), 0.5, np.float32)

    stats = rollout_batch([_Countdown() for _ in range(3)], policy, seeds=[0, 1, 3])
    assert [s.length for s in stats] == [2, 3, 5]
    assert [s.episode_return for s in stats] == [1.0, 1.5, 2.5]
    assert [s.success for s in stats] == [False, True, True]
    assert [s.seed for s in stats] == [0, 1, 3]
    assert calls == [([0, 1, 2], [0, 0, 0]), ([0, 1, 2], [1, 1, 1]), ([1, 2], [2, 2]),
                     ([2], [3]), ([2], [4])]
    capped = rollout_batch([_Countdown() for _ in range(2)], policy, seeds=[1, 3], horizon=2)
    assert [s.length for s in capped] == [2, 2]
    with pytest.raises(ValueError, match="one seed per env"):
        rollout_batch([_Countdown()], policy, seeds=[0, 1])
