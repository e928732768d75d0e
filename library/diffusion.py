"""The base policy π0: an ε-prediction DDPM over actions, conditioned on the state.

T = 5 noise steps on a variance-preserving schedule, a noise predictor made only of
`nn.Linear` layers (so every one of them can carry skills), ancestral sampling clipped to
[-1, 1] at every step as in IDQL, and IDQL's candidate selection for evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from library.config import StoredConfig, is_count, is_finite_number
from library.errors import DataError, ShapeError, SpecError
from library.mish import Mish

EpsFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""A noise predictor: (a_t [B, A], normalised state [B, S], step t [B] in 1..T) -> ε [B, A].

`DiffusionPolicy.loss` and `.sample` take one to replace the policy's own network, which is
how noise-level composition (Σ α_i ε_i) reuses the same noising and sampling code.
"""

Noise = torch.Generator | Sequence[torch.Generator] | None
"""Where sampling noise comes from: one generator for the whole batch (None: torch's
global one), or one generator per equal block of consecutive rows. Evaluation gives each
episode its own generator, so an episode draws the same noise whether it is rolled out
alone or side by side with others (`standard_normal`)."""


def standard_normal(shape: tuple[int, int], noise: Noise, like: Tensor) -> Tensor:
    """N(0, I) of `shape` [R, A] on `like`'s device and dtype, drawn from `noise`.

    With G generators, R must be a multiple of G: generator g fills rows g·R/G .. (g+1)·R/G − 1
    with exactly the draw `torch.randn((R/G, A), generator=g)` would make alone.
    """
    if noise is None or isinstance(noise, torch.Generator):
        return torch.randn(shape, generator=noise, device=like.device, dtype=like.dtype)
    rows, width = shape
    if not noise or rows % len(noise):
        raise ShapeError(f"{rows} rows cannot be split among {len(noise)} noise generators")
    block = rows // len(noise)
    return torch.cat([torch.randn((block, width), generator=g, device=like.device, dtype=like.dtype)
                      for g in noise])


@dataclass(frozen=True)
class NoiseDraw:
    """The random draws of one ε-loss evaluation of B samples (`DiffusionPolicy.draw_noise`)."""

    t: Tensor
    """Noise step per sample, in 1..T: [B]."""
    noise: Tensor
    """ε: [B, A]."""
    keep: list[Tensor] | None
    """Dropout keep mask per block, [B, hidden] each, scaled by 1/(1 − rate); None: none."""

    @staticmethod
    def cat(draws: Sequence[NoiseDraw]) -> NoiseDraw:
        """The draws of consecutive blocks of rows, as one draw."""
        keeps = [d.keep for d in draws]
        keep = None if keeps[0] is None else [torch.cat(masks) for masks in zip(*keeps)]
        return NoiseDraw(torch.cat([d.t for d in draws]), torch.cat([d.noise for d in draws]), keep)


ACTIVATIONS = {"mish": Mish, "relu": nn.ReLU}
"""Mish is `library.mish.Mish`: nn.Mish's function with a faster training path."""
TIME_EMBEDDINGS = ("fixed", "learned")


@dataclass(frozen=True)
class PolicyConfig(StoredConfig):
    """Shape of a diffusion policy. Skills and composers on a base share its config."""

    FIELD = "policy"

    obs_dim: int
    """State dimension S."""
    act_dim: int
    """Action dimension A; actions live in [-1, 1]."""
    hidden: int = 256
    """Width of the residual MLP."""
    n_blocks: int = 3
    """Number of LayerNorm residual blocks."""
    time_dim: int = 16
    """Size of the (Fourier) time embedding; even."""
    T: int = 5
    """Number of diffusion steps."""
    beta_min: float = 0.1
    """VP schedule β_min."""
    beta_max: float = 10.0
    """VP schedule β_max."""
    activation: str = "mish"
    """Nonlinearity inside the network: "mish" or "relu"."""
    block_width: int = 1
    """Inner width of each residual block as a multiple of `hidden`: 1 (hidden → hidden,
    ours) or 4 (hidden → 4·hidden → hidden, the official `MLPResNet`'s)."""
    time_embedding: str = "fixed"
    """"fixed" (log-spaced sinusoids) or "learned" (Fourier features with a trained
    frequency per feature, drawn N(0, 0.2) as the official code's); an MLP follows either."""
    dropout: float = 0.0
    """Rate at which each residual block's input is dropped while the policy's own weights
    train (a base, or a skill's adapters; never a composer's α, never sampling), as the
    official `MLPResNet` does with 0.1. 0 (ours) draws no masks at all."""

    def __post_init__(self) -> None:
        positive = {"obs_dim": 1, "act_dim": 1, "hidden": 1, "n_blocks": 0, "time_dim": 2, "T": 1}
        for name, minimum in positive.items():
            value = getattr(self, name)
            if not is_count(value, minimum):
                raise SpecError(name, f"must be an integer >= {minimum}, got {value!r}")
        if self.time_dim % 2:
            raise SpecError("time_dim", f"must be even, got {self.time_dim}")
        for name in ("beta_min", "beta_max"):
            value = getattr(self, name)
            if not (is_finite_number(value) and value > 0):
                raise SpecError(name, f"must be a positive number, got {value!r}")
        if self.beta_max < self.beta_min:
            raise SpecError("beta_max", f"must be >= beta_min ({self.beta_min}), got {self.beta_max}")
        if not is_count(self.block_width):
            raise SpecError("block_width", f"must be an integer >= 1, got {self.block_width!r}")
        if self.time_embedding not in TIME_EMBEDDINGS:
            raise SpecError("time_embedding", f"must be one of {', '.join(TIME_EMBEDDINGS)}, "
                                              f"got {self.time_embedding!r}")
        if not (is_finite_number(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise SpecError("dropout", f"must be a number in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise SpecError("activation", f"must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")



def vp_betas(T: int, beta_min: float, beta_max: float) -> Tensor:
    """β_t = 1 − exp(−β_min/T − ½(β_max−β_min)(2t−1)/T²) for t = 1..T: [T] (index t−1)."""
    t = torch.arange(1, T + 1, dtype=torch.float64)
    betas = 1.0 - torch.exp(-beta_min / T - 0.5 * (beta_max - beta_min) * (2 * t - 1) / T**2)
    return betas.float()


class StateNormalizer(nn.Module):
    """(s − mean) / std, clamped to ±10, with statistics fixed at the base's pretraining data.

    Dimensions that are (near) constant in that data get std 1 rather than their tiny std:
    otherwise a later task that moves such a dimension would feed values in the thousands
    to every skill on this base (the "normalisation trap").
    """

    CLAMP = 10.0

    def __init__(self, mean: Tensor, std: Tensor):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ShapeError(f"normaliser mean {list(mean.shape)} and std {list(std.shape)} must be equal [S]")
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()) or (std <= 0).any():
            raise DataError("normaliser statistics must be finite with std > 0")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    @classmethod
    def from_data(cls, obs: Tensor) -> StateNormalizer:
        """Statistics of `obs` [N, S]; dims with std < 1e-3·max(1, |mean|) get std 1."""
        obs = torch.as_tensor(obs, dtype=torch.float32)
        if obs.dim() != 2 or obs.shape[0] < 1:
            raise ShapeError(f"normaliser data must be [N, S] with N >= 1, got {list(obs.shape)}")
        if not torch.isfinite(obs).all():
            raise DataError("normaliser data contains non-finite values")
        mean = obs.mean(dim=0)
        std = obs.std(dim=0, unbiased=False)
        constant = std < 1e-3 * mean.abs().clamp(min=1.0)
        return cls(mean, torch.where(constant, torch.ones_like(std), std))

    @classmethod
    def identity(cls, obs_dim: int) -> StateNormalizer:
        return cls(torch.zeros(obs_dim), torch.ones(obs_dim))

    @property
    def obs_dim(self) -> int:
        return self.mean.shape[0]

    def forward(self, obs: Tensor) -> Tensor:
        return ((obs - self.mean) / self.std).clamp(-self.CLAMP, self.CLAMP)


class ResidualBlock(nn.Module):
    """x + fc2(act(fc1(LN(x·keep)))), fc1: hidden → width·hidden, fc2 back to hidden.

    `keep` is a dropout mask already scaled by 1/(1 − rate) (`DiffusionPolicy.loss` draws
    it), or None: the residual path itself is never dropped, as in the official block."""

    def __init__(self, hidden: int, activation: str, width: int = 1):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, width * hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(width * hidden, hidden)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        inner = x if keep is None else x * keep
        return x + self.fc2(self.act(self.fc1(self.norm(inner))))


class NoisePredictor(nn.Module):
    """ε_θ(a_t, s, t): a LayerNorm residual MLP over [a_t, s_norm, emb(t)].

    emb(t) is a fixed sinusoidal (Fourier) feature of the integer step followed by a small
    learned MLP, as in IDQL. Every learned map is an nn.Linear so skills can adapt all.
    """

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        half = cfg.time_dim // 2
        if cfg.time_embedding == "learned":
            # The official LoRA_FourierFeatures: f = 2π·t·w, w ~ N(0, 0.2), trained with the
            # base (a parameter, not a Linear: skills leave it alone, as the official code).
            self.freqs = nn.Parameter(2 * math.pi * 0.2 * torch.randn(half))
        else:
            # Log-spaced frequencies from 1 to 1/100 rad per step: distinct for t = 1..T.
            freqs = torch.exp(-math.log(100.0) * torch.arange(half, dtype=torch.float32)
                              / max(half - 1, 1))
            self.register_buffer("freqs", freqs, persistent=False)
        self.time_in = nn.Linear(cfg.time_dim, 2 * cfg.time_dim)
        self.time_act = ACTIVATIONS[cfg.activation]()
        self.time_out = nn.Linear(2 * cfg.time_dim, cfg.time_dim)
        self.input = nn.Linear(cfg.act_dim + cfg.obs_dim + cfg.time_dim, cfg.hidden)
        self.blocks = nn.ModuleList(ResidualBlock(cfg.hidden, cfg.activation, cfg.block_width)
                                    for _ in range(cfg.n_blocks))
        self.out_norm = nn.LayerNorm(cfg.hidden)
        self.output = nn.Linear(cfg.hidden, cfg.act_dim)

    def forward(
        self, a_t: Tensor, s_norm: Tensor, t: Tensor, keep: list[Tensor] | None = None
    ) -> Tensor:
        # a_t: [B, A], s_norm: [B, S], t: [B] integer steps in 1..T; keep: one [B, hidden]
        # dropout mask per block, or None
        phase = t.to(a_t.dtype).unsqueeze(-1) * self.freqs  # [B, time_dim/2]
        emb = self.time_out(self.time_act(self.time_in(torch.cat([phase.sin(), phase.cos()], -1))))
        x = self.input(torch.cat([a_t, s_norm, emb], dim=-1))  # [B, hidden]
        for i, block in enumerate(self.blocks):
            x = block(x, None if keep is None else keep[i])
        return self.output(self.out_norm(x))  # [B, A]


class DiffusionPolicy(nn.Module):
    """π(a | s) as a T-step DDPM; the network sees the normalised state."""

    def __init__(self, cfg: PolicyConfig, normalizer: StateNormalizer | None = None):
        super().__init__()
        normalizer = normalizer if normalizer is not None else StateNormalizer.identity(cfg.obs_dim)
        if normalizer.obs_dim != cfg.obs_dim:
            raise ShapeError(f"normaliser has {normalizer.obs_dim} state dims, the policy {cfg.obs_dim}")
        self.config = cfg
        self.normalizer = normalizer
        self.net = NoisePredictor(cfg)
        betas = vp_betas(cfg.T, cfg.beta_min, cfg.beta_max)
        alphas = 1.0 - betas
        # Derived from the config, so not part of the state dict. Index t−1 for step t.
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas", alphas, persistent=False)
        self.register_buffer("alpha_bars", torch.cumprod(alphas, dim=0), persistent=False)
        # The sampler's per-step constants as Python floats (fewer tiny tensor ops per step):
        # (t, β_t/√(1−ᾱ_t), 1/√α_t, σ_t = √β_t) for t = T..1
        self._steps = [
            (t, (b / (1.0 - ab) ** 0.5), 1.0 / a**0.5, b**0.5)
            for t, b, a, ab in zip(
                range(1, cfg.T + 1), betas.tolist(), alphas.tolist(), self.alpha_bars.tolist()
            )
        ][::-1]

    def check_inputs(self, obs: Tensor, actions: Tensor | None = None) -> None:
        cfg = self.config
        if obs.dim() != 2 or obs.shape[1] != cfg.obs_dim:
            raise ShapeError(f"obs must be [B, {cfg.obs_dim}], got {list(obs.shape)}")
        if actions is not None and (actions.dim() != 2 or actions.shape != (obs.shape[0], cfg.act_dim)):
            raise ShapeError(f"actions must be [{obs.shape[0]}, {cfg.act_dim}], got {list(actions.shape)}")

    def loss(
        self,
        obs: Tensor,
        actions: Tensor,
        weights: Tensor | None = None,
        generator: torch.Generator | None = None,
        eps_fn: EpsFn | None = None,
        dropout: bool = False,
    ) -> dict[str, Tensor]:
        """Paper Eq. 3: E_t,ε w(s, a)·‖ε − ε_θ(a_t, s, t)‖² (per-sample mean over action dims).

        obs [B, S] raw, actions [B, A], weights [B] or None (all 1). Returns {"loss": the
        weighted mean, "mse": the unweighted mean}. `dropout` applies the config's rate to
        the blocks (`PolicyConfig.dropout`; the masks come from `generator` after t and ε,
        so a rate of 0 or dropout=False leaves every draw as it was); it needs the own
        network (no `eps_fn`).
        """
        self.check_inputs(obs, actions)  # before the weights' check, which reads obs's shape
        batch = obs.shape[0]
        if weights is not None and weights.shape != (batch,):
            raise ShapeError(f"loss weights must be [{batch}], got {list(weights.shape)}")
        mse = self.noise_errors(obs, actions, generator, eps_fn, dropout)
        loss = mse.mean() if weights is None else (weights.detach() * mse).mean()
        return {"loss": loss, "mse": mse.detach().mean()}

    def noise_errors(
        self,
        obs: Tensor,
        actions: Tensor,
        generator: torch.Generator | None = None,
        eps_fn: EpsFn | None = None,
        dropout: bool = False,
    ) -> Tensor:
        """Each sample's ‖ε − ε_θ(a_t, s, t)‖² (mean over action dims) for one draw of t and
        ε per sample: [B], the terms `loss` averages (same arguments, same draws)."""
        self.check_inputs(obs, actions)
        if dropout and self.config.dropout > 0 and eps_fn not in (None, self.net):
            raise ValueError("dropout needs the policy's own network, not an eps_fn")
        return self.errors_of(obs, actions, self.draw_noise(actions, generator, dropout), eps_fn)

    def draw_noise(self, actions: Tensor, generator: torch.Generator | None = None,
                   dropout: bool = False) -> NoiseDraw:
        """The random part of one ε-loss evaluation of `actions` [B, A]: t, then ε, then
        (with `dropout` and a rate > 0) one keep mask per block, in that order."""
        batch = actions.shape[0]
        t = torch.randint(1, self.config.T + 1, (batch,), generator=generator, device=actions.device)
        noise = torch.randn(actions.shape, generator=generator, device=actions.device,
                            dtype=actions.dtype)
        rate = self.config.dropout if dropout else 0.0
        keep = self._dropout_masks(batch, rate, generator, actions) if rate > 0 else None
        return NoiseDraw(t, noise, keep)

    def errors_of(self, obs: Tensor, actions: Tensor, draw: NoiseDraw,
                  eps_fn: EpsFn | None = None) -> Tensor:
        """`noise_errors` for a given draw: [B]."""
        alpha_bar = self.alpha_bars[draw.t - 1].unsqueeze(-1)  # [B, 1]
        a_t = alpha_bar.sqrt() * actions + (1.0 - alpha_bar).sqrt() * draw.noise
        s_norm = self.normalizer(obs)
        if draw.keep is not None:
            eps = self.net(a_t, s_norm, draw.t, draw.keep)
        else:
            eps = (eps_fn or self.net)(a_t, s_norm, draw.t)
        return (eps - draw.noise).pow(2).mean(dim=-1)  # [B]

    def _dropout_masks(
        self, batch: int, rate: float, generator: torch.Generator | None, like: Tensor
    ) -> list[Tensor]:
        """One [B, hidden] keep mask per block, scaled by 1/(1 − rate) (inverted dropout)."""
        shape = (batch, self.config.hidden)
        return [
            (torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype) >= rate)
            .to(like.dtype).div_(1.0 - rate)
            for _ in range(self.config.n_blocks)
        ]

    @torch.no_grad()
    def sample(
        self, obs: Tensor, generator: Noise = None, eps_fn: EpsFn | None = None
    ) -> Tensor:
        """Ancestral DDPM from N(0, I): obs [B, S] raw -> actions [B, A] in [-1, 1].

        σ_t² = β_t and every x_t is clipped to [-1, 1], as in IDQL (on which PSEC builds).
        `generator` may be one generator per block of rows (`Noise`).
        """
        self.check_inputs(obs)
        eps_fn = eps_fn or self.net
        s_norm = self.normalizer(obs)
        batch = obs.shape[0]
        shape = (batch, self.config.act_dim)
        x = standard_normal(shape, generator, obs)
        for step, eps_coef, x_coef, sigma in self._steps:
            t = torch.full((batch,), step, dtype=torch.long, device=obs.device)
            eps = eps_fn(x, s_norm, t)
            # mean of x_{t-1}: (x_t − β_t/√(1−ᾱ_t)·ε) / √α_t
            x = torch.sub(x, eps, alpha=eps_coef).mul_(x_coef)
            if step > 1:
                noise = standard_normal(shape, generator, obs)
                x.add_(noise, alpha=sigma)
            x.clamp_(-1.0, 1.0)
        return x

    def forward(self, obs: Tensor) -> Tensor:
        return self.sample(obs)


@torch.no_grad()
def select_action(
    sample_fn: Callable[[Tensor], Tensor],
    obs: Tensor,
    n_candidates: int,
    q_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    minimize: bool = False,
) -> Tensor:
    """IDQL-style evaluation: N candidates per state, keep argmax Q (argmin Q_c if minimize).

    obs [B, S] -> actions [B, A]. Without a critic there is nothing to choose by, so one
    sample per state is drawn whatever `n_candidates` says. q_fn(obs [M, S], a [M, A]) -> [M].
    """
    if not is_count(n_candidates):
        raise SpecError("n_candidates", f"must be a positive integer, got {n_candidates!r}")
    if q_fn is None or n_candidates == 1:
        return sample_fn(obs)
    batch = obs.shape[0]
    obs_rep = obs.repeat_interleave(n_candidates, dim=0)  # [B·N, S], candidates of a state adjacent
    candidates = sample_fn(obs_rep)  # [B·N, A]
    scores = q_fn(obs_rep, candidates).reshape(batch, n_candidates)
    best = scores.argmin(dim=1) if minimize else scores.argmax(dim=1)  # [B]
    return candidates.view(batch, n_candidates, -1)[torch.arange(batch, device=obs.device), best]


__all__ = [
    "EpsFn",
    "Noise",
    "standard_normal",
    "PolicyConfig",
    "StateNormalizer",
    "NoisePredictor",
    "DiffusionPolicy",
    "select_action",
    "vp_betas",
]
