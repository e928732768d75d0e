"""The SAC learner of tasks/generators/sac.py: its networks (a tanh-Gaussian actor, twin
Q critics as one ensemble), the replay buffer and the update; `SAC.state_dict()` holds
only tensors and numbers, so a run resumes bit for bit."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from library.errors import SpecError

if TYPE_CHECKING:
    from tasks.generators.sac import SACConfig


# ---------------------------------------------------------------------------------------
# Networks


def mlp(d_in: int, d_out: int, hidden: int, layers: int) -> nn.Sequential:
    """`layers` ReLU hidden layers of width `hidden`, then a linear output."""
    dims = [d_in] + [hidden] * layers
    modules: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        modules += [nn.Linear(a, b), nn.ReLU()]
    modules.append(nn.Linear(dims[-1], d_out))
    return nn.Sequential(*modules)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; `act(obs)` is the deterministic action tanh(mean)."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        self.obs_dim, self.act_dim, self.hidden, self.layers = obs_dim, act_dim, hidden, layers
        self.net = mlp(obs_dim, 2 * act_dim, hidden, layers)

    def arch(self) -> dict[str, int]:
        """The constructor arguments (stored beside exported weights)."""
        return {"obs_dim": self.obs_dim, "act_dim": self.act_dim, "hidden": self.hidden,
                "layers": self.layers}

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # obs: [B, S] -> mean, log_std: [B, A]
        mean, raw = self.net(obs).chunk(2, dim=-1)
        # tanh keeps log_std in range with a gradient everywhere (CleanRL's choice).
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (torch.tanh(raw) + 1)
        return mean, log_std

    def sample(self, obs: torch.Tensor, generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised action [B, A] in (-1, 1) and its log-probability [B]."""
        mean, log_std = self(obs)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
        u = mean + log_std.exp() * eps
        log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log|d tanh(u)/du| = log(1 - tanh(u)^2), written in a form that never hits log(0).
        log_prob = log_prob - (2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))).sum(-1)
        return torch.tanh(u), log_prob

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic action tanh(mean): [B, S] -> [B, A]."""
        return torch.tanh(self(obs)[0])


class EnsembleLinear(nn.Module):
    """`n` independent linear layers applied in one batched matmul."""

    def __init__(self, n: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # nn.Linear's default init range
        self.weight = nn.Parameter(torch.empty(n, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [n, B, d_in] -> [n, B, d_out]
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Two Q networks evaluated together; returns Q: [2, B]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2):
        super().__init__()
        dims = [obs_dim + act_dim] + [hidden] * layers
        modules: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            modules += [EnsembleLinear(2, a, b), nn.ReLU()]
        modules.append(EnsembleLinear(2, dims[-1], 1))
        self.net = nn.Sequential(*modules)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1)                     # [B, S+A]
        return self.net(x.expand(2, *x.shape)).squeeze(-1)   # [2, B]


# ---------------------------------------------------------------------------------------
# Replay buffer

BUFFER_FIELDS = ("obs", "actions", "rewards", "costs", "next_obs", "terminals", "timeouts")


class ReplayBuffer:
    """Transitions in insertion order (a ring once full); saved as an uncompressed .npz.

    `terminals` marks true ends (no bootstrap), `timeouts` episodes cut by the horizon;
    together they delimit episodes, so the buffer can be turned back into a dataset.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        self.capacity = capacity
        self.data = {
            "obs": np.zeros((capacity, obs_dim), np.float32),
            "actions": np.zeros((capacity, act_dim), np.float32),
            "rewards": np.zeros(capacity, np.float32),
            "costs": np.zeros(capacity, np.float32),
            "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "terminals": np.zeros(capacity, np.float32),
            "timeouts": np.zeros(capacity, np.float32),
        }
        self.pos = 0    # next row to write
        self.size = 0   # rows filled
        self.added = 0  # transitions ever added (pos == added % capacity)

    def add(self, **transition) -> None:
        for key in BUFFER_FIELDS:
            self.data[key][self.pos] = transition[key]
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.added += 1

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        idx = rng.integers(0, self.size, size=batch_size)
        return {k: torch.from_numpy(v[idx]) for k, v in self.data.items()}

    def save(self, path: Path) -> None:
        np.savez(path, pos=self.pos, size=self.size, added=self.added,
                 **{k: v[: self.size] for k, v in self.data.items()})

    def load(self, path: Path) -> None:
        with np.load(path) as f:
            self.pos, self.size, self.added = int(f["pos"]), int(f["size"]), int(f["added"])
            if self.size > self.capacity:
                raise SpecError("buffer_size", f"checkpoint holds {self.size} transitions, more than the capacity")
            for key in BUFFER_FIELDS:
                self.data[key][: self.size] = f[key]


# ---------------------------------------------------------------------------------------
# The agent: networks, optimisers, temperature, one update


class SAC:
    """SAC's learnable state and its update; `state_dict()` holds only tensors and numbers."""

    def __init__(self, obs_dim: int, act_dim: int, config: SACConfig):
        self.config = config
        torch.manual_seed(config.seed)
        self.actor = Actor(obs_dim, act_dim, config.hidden, config.layers)
        self.critic = TwinQ(obs_dim, act_dim, config.hidden, config.layers)
        self.critic_target = TwinQ(obs_dim, act_dim, config.hidden, config.layers)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.log_alpha = torch.tensor(math.log(config.init_alpha), requires_grad=True)
        self.target_entropy = -float(act_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=config.alpha_lr)
        # One generator for every sample the agent draws, so its state can be checkpointed.
        self.generator = torch.Generator().manual_seed(config.seed)

    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One gradient step on critics, actor and temperature; returns named loss terms."""
        cfg = self.config
        obs, act, next_obs = batch["obs"], batch["actions"], batch["next_obs"]
        reward = batch["rewards"] - cfg.cost_penalty * batch["costs"]            # [B]
        alpha = self.log_alpha.exp().detach()

        with torch.no_grad():
            next_act, next_logp = self.actor.sample(next_obs, self.generator)
            next_q = self.critic_target(next_obs, next_act).min(0).values - alpha * next_logp
            target = reward + cfg.gamma * (1.0 - batch["terminals"]) * next_q    # [B]
        q = self.critic(obs, act)                                                 # [2, B]
        critic_loss = (q - target).pow(2).mean(-1).sum()
        self.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_opt.step()

        # The actor's loss reaches the critic's weights; freezing them skips those grads.
        self.critic.requires_grad_(False)
        new_act, logp = self.actor.sample(obs, self.generator)
        actor_loss = (alpha * logp - self.critic(obs, new_act).min(0).values).mean()
        self.actor_opt.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_opt.step()
        self.critic.requires_grad_(True)

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad(set_to_none=True)
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p_target, p in zip(self.critic_target.parameters(), self.critic.parameters()):
                p_target.lerp_(p, cfg.tau)
        return {"critic_loss": critic_loss.item(), "actor_loss": actor_loss.item(),
                "alpha": alpha.item(), "entropy": -logp.mean().item(), "q": q.mean().item()}

    def state_dict(self) -> dict:
        return {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "critic_target": self.critic_target.state_dict(),
            "log_alpha": self.log_alpha.detach().clone(),
            "actor_opt": self.actor_opt.state_dict(),
            "critic_opt": self.critic_opt.state_dict(),
            "alpha_opt": self.alpha_opt.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.critic_target.load_state_dict(state["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(state["log_alpha"])
        self.actor_opt.load_state_dict(state["actor_opt"])
        self.critic_opt.load_state_dict(state["critic_opt"])
        self.alpha_opt.load_state_dict(state["alpha_opt"])
        self.generator.set_state(state["generator"])
