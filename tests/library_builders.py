"""Small policies with non-trivial skills, shared by the library tests (not collected)."""

import torch

from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.lora import add_skill, lora_layers

OBS_DIM, ACT_DIM = 5, 3


def tiny_policy(seed: int = 0, hidden: int = 32, obs_dim: int = OBS_DIM) -> DiffusionPolicy:
    """A small base whose normaliser comes from random data."""
    torch.manual_seed(seed)
    data = torch.randn(64, obs_dim, generator=torch.Generator().manual_seed(seed)) * 2 + 1
    return DiffusionPolicy(
        PolicyConfig(obs_dim=obs_dim, act_dim=ACT_DIM, hidden=hidden), StateNormalizer.from_data(data)
    )


def add_trained_looking_skill(
    policy: DiffusionPolicy, name: str, seed: int, kind: str = "lora", rank: int = 4
) -> None:
    """Add skill `name` and give it random non-zero weights, as if it had been trained."""
    g = torch.Generator().manual_seed(seed)
    add_skill(policy, name, rank=rank, alpha=2.0 * rank, kind=kind, generator=g)
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            if kind == "lora":
                layer.lora_B[name].weight.normal_(0.0, 0.2, generator=g)
            else:
                layer.full_delta[name].weight.normal_(0.0, 0.05, generator=g)


def observations(batch: int, seed: int = 1, obs_dim: int = OBS_DIM) -> torch.Tensor:
    return torch.randn(batch, obs_dim, generator=torch.Generator().manual_seed(seed)) * 2 + 1
