"""scripts/alpha_loss_profile.py: a composer's training loss along α, on common draws."""

import pytest
import torch
from library_builders import ACT_DIM, add_trained_looking_skill, observations, tiny_policy
from script_modules import load_script

from library.composition import Composer
from library.lora import add_skill, use_skills

alpha_loss_profile = load_script("alpha_loss_profile")


def composer_over(old_is_zero: bool) -> Composer:
    """base + `old` + `new` (new last), `old` a zero adapter (as freshly added) or not."""
    policy = tiny_policy()
    if old_is_zero:
        add_skill(policy, "old", rank=4, alpha=64.0, generator=torch.Generator().manual_seed(5))
    else:
        add_trained_looking_skill(policy, "old", seed=5)
    add_trained_looking_skill(policy, "new", seed=6)
    return Composer(policy, ["old", "new"], "parameter")


def data(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    actions = torch.rand(n, ACT_DIM, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return observations(n), actions


def test_every_point_sees_the_same_rows_and_draws():
    composer = composer_over(old_is_zero=False)
    obs, actions = data()
    one = alpha_loss_profile.batch_losses(composer, obs, actions, [0.3, 1.0], 4, 64, seed=1)
    two = alpha_loss_profile.batch_losses(composer, obs, actions, [0.3, 1.0], 4, 64, seed=1)
    assert torch.equal(one, two)
    other = alpha_loss_profile.batch_losses(composer, obs, actions, [0.3, 1.0], 4, 64, seed=2)
    assert not torch.equal(one, other)


def test_a_zero_skill_leaves_the_loss_exactly_where_it_starts_and_only_the_regulariser_grows():
    obs, actions = data()
    lines = alpha_loss_profile.profile(composer_over(old_is_zero=True), obs, actions,
                                       batches=4, batch_size=64, seed=0, grid=(0.0, 0.5, 1.0))
    added = [line for line in lines if line["path"] == "added"]
    traded = [line for line in lines if line["path"] == "traded"]
    assert [line["alpha"] for line in added] == [{"old": x, "new": 1.0} for x in (0.0, 0.5, 1.0)]
    assert [line["minus_start"] for line in added] == [0.0, 0.0, 0.0]
    assert [line["states_lowered"] for line in added] == [0.0, 0.0, 0.0]
    regs = [line["regulariser"] for line in added]
    assert regs[0] == 0.0 and 0 < regs[1] < regs[2]
    # Trading the new skill away for a zero adapter does change the loss.
    assert [line["alpha"] for line in traded][-1] == {"old": 1.0, "new": 0.0}
    assert traded[0]["minus_start"] == 0.0 and traded[-1]["minus_start"] != 0.0
    assert traded[-1]["stderr"] > 0


def test_a_trained_skill_moves_the_loss():
    obs, actions = data()
    lines = alpha_loss_profile.profile(composer_over(old_is_zero=False), obs, actions,
                                       batches=4, batch_size=64, seed=0, grid=(0.0, 1.0))
    added = [line for line in lines if line["path"] == "added"]
    assert added[0]["minus_start"] == 0.0
    assert added[1]["eps_loss"] == pytest.approx(added[0]["eps_loss"] + added[1]["minus_start"],
                                                 abs=1e-4)
    assert added[1]["minus_start"] != 0.0
    assert added[0]["states_lowered"] == 0.0 and 0.0 < added[1]["states_lowered"] < 1.0


def test_state_errors_average_the_loss_terms_of_every_state():
    composer = composer_over(old_is_zero=False)
    obs, actions = data(100)
    errors = alpha_loss_profile.state_errors(composer, obs, actions, [0.0, 1.0], draws=1,
                                             chunk=100, seed=3)
    with torch.no_grad(), use_skills(composer.policy, ["old", "new"], torch.tensor([0.0, 1.0])):
        loss = composer.policy.loss(obs, actions, generator=torch.Generator().manual_seed(3))
    assert errors.shape == (100,)
    assert float(errors.mean()) == pytest.approx(float(loss["loss"]), rel=1e-6)


def test_the_table_averages_over_composers_per_point_and_data():
    obs, actions = data()
    one = alpha_loss_profile.profile(composer_over(old_is_zero=False), obs, actions,
                                     batches=2, batch_size=32, seed=0, grid=(0.0, 1.0))
    lines = [{**line, "data": "train"} for line in one]
    lines += [{**line, "data": "train", "eps_loss": line["eps_loss"] + 0.5} for line in one]
    lines += [{**line, "data": "held", "states_lowered": 0.5} for line in one]
    table = alpha_loss_profile.markdown(lines).splitlines()
    assert len(table) == 2 + 4  # header, rule, 2 paths × 2 weights
    assert "ε-loss on train" in table[0] and "ε-loss on held" in table[0]
    assert table[1].count("|") == table[0].count("|")
    first = next(line for line in table if line.startswith("| added | 0.00 |"))
    cells = [cell.strip() for cell in first.strip("|").split("|")]
    assert cells[3] == f"{one[0]['eps_loss'] + 0.25:.4f} ± 0.2500"
    assert cells[5] == f"{one[0]['eps_loss']:.4f} ± 0.0000" and cells[6] == "0.500"
