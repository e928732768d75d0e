"""A task spec accepts exactly what the library it feeds accepts.

The spec's choice lists are the library's tuples and its numeric bounds are the library
configs' own checks (tasks.spec_sections `library_rule`), so a value cannot pass the spec and then
fail inside a Ray fit. These tests try each field with values on and around its bounds and
compare the spec's verdict with the library's.
"""

import math
from typing import get_args

import pytest

from library.composition import INITS, MODES, OUTPUTS, AlphaConfig
from library.critics import REWARD_NORMS, CriticConfig
from library.diffusion import TIME_EMBEDDINGS, PolicyConfig
from library.errors import PsecError
from library.lora import KINDS, adapter_spec
from library.weighting import WEIGHTINGS, WeightingConfig
from tasks.spec import AlphaSpec, ComposerSpec, CriticSpec, LoraSpec, NetworkSpec, TaskSpec

NUMBERS = [-1, 0, 1e-9, 0.5, 0.99, 1, 1.0000001, 2, 16, 1e9, math.inf, math.nan]


def accepts(build, *args, **kwargs) -> bool:
    """Whether `build(*args, **kwargs)` accepts the values."""
    try:
        build(*args, **kwargs)
    except (PsecError, ValueError):  # pydantic's ValidationError is a ValueError
        return False
    return True


def test_the_spec_choice_lists_are_the_library_tuples():
    fields = {
        (AlphaSpec, "output"): OUTPUTS, (AlphaSpec, "init"): INITS,
        (ComposerSpec, "mode"): MODES, (LoraSpec, "kind"): KINDS,
        (NetworkSpec, "time_embedding"): TIME_EMBEDDINGS,
        (CriticSpec, "reward_norm"): REWARD_NORMS, (TaskSpec, "objective"): WEIGHTINGS,
    }
    for (spec, field), choices in fields.items():
        assert get_args(spec.model_fields[field].annotation) == choices, (spec.__name__, field)


@pytest.mark.parametrize("field", ["scale", "reg"])
def test_alpha_numbers_agree(field):
    for value in NUMBERS:
        for output in OUTPUTS:
            kwargs = {field: value, "output": output}
            assert accepts(AlphaSpec, **kwargs) == accepts(AlphaConfig, **kwargs), kwargs


def test_alpha_choice_pairs_agree():
    for output in OUTPUTS:
        for init in INITS:
            kwargs = {"output": output, "init": init}
            assert accepts(AlphaSpec, **kwargs) == accepts(AlphaConfig, **kwargs), kwargs
    assert not accepts(AlphaSpec, output="softmax", init="zero")


@pytest.mark.parametrize("field", ["discount", "expectile"])
def test_critic_numbers_agree(field):
    for value in NUMBERS:
        spec = accepts(CriticSpec, **{field: value})
        library = accepts(CriticConfig, obs_dim=1, act_dim=1, **{field: value})
        assert spec == library, (field, value)
    assert not accepts(CriticSpec, discount=1.0)  # γ = 1 passed the spec before


def test_critic_beta_agrees_with_the_weighting():
    for value in NUMBERS:
        assert accepts(CriticSpec, beta=value) == accepts(WeightingConfig, beta=value), value


def test_lora_shapes_agree():
    for kind in KINDS:
        for rank in [-1, 0, 1, 8]:  # ints: the spec types rank as one, full adapters or not
            for alpha in [None, *NUMBERS]:
                spec = accepts(LoraSpec, kind=kind, rank=rank, alpha=alpha)
                library = accepts(adapter_spec, kind, rank, alpha)
                assert spec == library, (kind, rank, alpha)


def test_network_shapes_agree():
    for width in [-1, 0, 1, 4, 2.5]:
        for embedding in TIME_EMBEDDINGS:
            spec = accepts(NetworkSpec, block_width=width, time_embedding=embedding)
            library = accepts(PolicyConfig, obs_dim=1, act_dim=1, block_width=width,
                              time_embedding=embedding)
            assert spec == library, (width, embedding)
    for rate in [*NUMBERS, 0.0, 0.1, 0.99, 1.0]:
        spec = accepts(NetworkSpec, dropout=rate)
        assert spec == accepts(PolicyConfig, obs_dim=1, act_dim=1, dropout=rate), rate
