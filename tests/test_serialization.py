"""Bases, skills and composers round-trip through (config, tensors) and refuse what does not fit."""

import json

import pytest
import safetensors.torch
import torch
from library_builders import add_trained_looking_skill, observations, tiny_policy

from library.composition import AlphaConfig, Composer
from library.errors import DataError, ShapeError, StoreError
from library.lora import merge, skill_names, use_skills
from library.serialization import (
    PEFT_PREFIX,
    dump_base,
    dump_composer,
    dump_skill,
    load_base,
    load_composer,
    load_skill,
)

torch.set_num_threads(1)


def through_files(config, tensors, tmp_path):
    """What the store does: JSON config, safetensors weights."""
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(tensors, str(path))
    return json.loads(json.dumps(config)), safetensors.torch.load_file(str(path))


def sample(policy, skills, obs):
    with use_skills(policy, skills):
        return policy.sample(obs, torch.Generator().manual_seed(0))


def test_base_round_trip_keeps_weights_and_normaliser(tmp_path):
    policy = tiny_policy(seed=3)
    add_trained_looking_skill(policy, "walk", seed=1)  # skills on it are not part of the base
    config, tensors = through_files(*dump_base(policy), tmp_path)
    assert config["kind"] == "base" and config["policy"]["obs_dim"] == policy.config.obs_dim
    assert "net.input.weight" in tensors and "normalizer.std" in tensors
    assert not any("lora" in key or "base_layer" in key for key in tensors)
    loaded = load_base(config, tensors)
    assert torch.equal(loaded.normalizer.std, policy.normalizer.std)
    obs = observations(6)
    assert torch.equal(sample(loaded, [], obs), sample(policy, [], obs))


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_skill_round_trip_peft_style(kind, tmp_path):
    policy = tiny_policy()
    add_trained_looking_skill(policy, "walk", seed=1, kind=kind, rank=6)
    config, tensors = through_files(*dump_skill(policy, "walk", base_name="b0"), tmp_path)
    assert config["peft_type"] == ("LORA" if kind == "lora" else "PSEC_FULL")
    assert config["kind"] == kind and config["base_model_name_or_path"] == "b0"
    if kind == "lora":
        assert config["r"] == 6 and config["lora_alpha"] == 12.0
        assert f"{PEFT_PREFIX}net.blocks.0.fc1.lora_A.weight" in tensors
        assert tensors[f"{PEFT_PREFIX}net.blocks.0.fc1.lora_A.weight"].shape == (6, 32)
    assert "net.blocks.0.fc1" in config["target_modules"]
    assert not any("walk" in key for key in tensors)

    fresh = load_base(*dump_base(policy))
    load_skill(fresh, "walk", config, tensors)
    obs = observations(6)
    assert torch.equal(sample(fresh, ["walk"], obs), sample(policy, ["walk"], obs))
    assert not torch.equal(sample(fresh, ["walk"], obs), sample(fresh, [], obs))


def test_composer_round_trip(tmp_path):
    policy = tiny_policy()
    for i, name in enumerate(["a", "b"]):
        add_trained_looking_skill(policy, name, seed=i)
    composer = Composer(policy, ["a", "base", "b"], "noise", AlphaConfig(output="softmax", scale=1.5))
    with torch.no_grad():
        composer.context.net[-1].weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    config, tensors = through_files(*dump_composer(composer), tmp_path)
    assert config["skills"] == ["a", "base", "b"] and config["mode"] == "noise"
    assert not any(key.startswith("policy.") for key in tensors)
    loaded = load_composer(policy, config, tensors)
    obs = observations(5)
    assert torch.equal(loaded.alpha(obs), composer.alpha(obs))
    fixed = Composer(policy, ["a", "b"], "fixed")
    assert set(dump_composer(fixed)[1]) == {"logits"}


def test_skill_on_a_base_of_other_dims_is_refused_naming_both():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "walk", seed=1)
    config, tensors = dump_skill(policy, "walk")
    other = tiny_policy(obs_dim=7)
    with pytest.raises(ShapeError, match="obs_dim=5 but this base has obs_dim=7"):
        load_skill(other, "walk", config, tensors)
    # Even with a config that lies about the dims, the tensor shapes give it away.
    config = {**config, "policy": other.config.to_dict()}
    with pytest.raises(ShapeError, match=r"is \[4, 24\] but the base needs \[4, 26\]"):
        load_skill(other, "walk", config, tensors)
    assert skill_names(other) == []


def test_broken_items_are_refused_and_nothing_changes():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "walk", seed=1)
    config, tensors = dump_skill(policy, "walk")
    target = tiny_policy()
    bad = dict(tensors)
    key = f"{PEFT_PREFIX}net.output.lora_B.weight"
    bad[key] = bad[key].clone()
    bad[key][0, 0] = float("nan")
    with pytest.raises(DataError, match="non-finite"):
        load_skill(target, "walk", config, bad)
    missing = {k: v for k, v in tensors.items() if k != key}
    with pytest.raises(ShapeError, match="missing"):
        load_skill(target, "walk", config, missing)
    with pytest.raises(StoreError, match="not a base"):
        load_base(config, tensors)
    assert skill_names(target) == []
    load_skill(target, "walk", config, tensors)
    with pytest.raises(StoreError, match="already exists"):
        load_skill(target, "walk", config, tensors)
    base_config, base_tensors = dump_base(policy)
    with pytest.raises(DataError, match="non-finite"):
        load_base(base_config, {**base_tensors, "net.input.bias": torch.full_like(base_tensors["net.input.bias"], float("inf"))})


def test_merged_base_is_not_dumped():
    policy = tiny_policy()
    add_trained_looking_skill(policy, "walk", seed=1)
    merge(policy, "walk")
    with pytest.raises(StoreError, match="merged"):
        dump_base(policy)
