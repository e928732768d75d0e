"""Learners: what trains, and its loss over a batch. The training loop owns the optimiser.

Every learner exposes the same small surface, which is all `library.training.train` and
the pipeline's Ray Train stages touch:

* `module` — the nn.Module that holds what trains; `to(device)` moves it and the critics;
* `parameters()` — the trainable parameters only, in a fixed order (the optimiser's);
* `loss(batch) -> dict[str, Tensor]` — named terms; "loss" is the one minimised;
* `step_loss(data, batch_size, seed, step, device)` — the terms of training step `step`,
  its batch and noise drawn from (seed, step) alone (what `library.training.train` calls);
* `after_step()` — bookkeeping after each optimiser step (critics: target networks; the
  base and skill learners: the EMA of their weights);
* `state_dict()` / `load_state_dict()` — copies of what a checkpoint must hold to resume;
* `ema_weights()` — a context in which the trained parameters hold their EMA (what is
  stored and evaluated, as in IDQL and the official PSEC code), restored on exit.

| learner | trains | loss |
| --- | --- | --- |
| `CriticLearner` | IQL critics and/or the feasibility critic | IQL / HJ losses, summed |
| `BaseLearner` | the whole diffusion policy | weighted ε-loss |
| `SkillLearner` | one new skill's adapters on the frozen base | weighted ε-loss with only that skill on |
| `StackedSkillLearner` | several new skills on one frozen base, as one batched computation | the sum of each skill's own ε-loss (BC) |
| `ComposerLearner` | θ of the composer's α(s) (or its constant weights) | weighted ε-loss of the composed policy |

Weighted objectives take critics that are already fitted: they are frozen here and only
read, through `library.weighting.make_weighting`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from library.critics import FeasibilityCritic, IQLCritics
from library.data import OfflineData
from library.diffusion import DiffusionPolicy, NoiseDraw
from library.errors import ShapeError, SpecError
from library.lora import add_skill, trainable_only, use_skills
from library.training import step_rng
from library.weighting import WeightingConfig, effective_sample_size, make_weighting

EMA_RATE = 1e-3
"""Rate of the actor's exponential moving average (the paper's "target update rate"): after
every step ema ← ema + rate·(θ − ema), from the initial weights, with no warm-up, as the
official code's `optax.incremental_update` does. The composer's α(s) has none (official)."""
EMA_PREFIX = "ema/"

if TYPE_CHECKING:
    from library.composition import ActionPool, Composer


class Learner(abc.ABC):
    """What one fit trains, and its loss."""

    module: nn.Module
    """The module holding every trained parameter."""

    def __init__(
        self, module: nn.Module, trainable: list[tuple[str, nn.Parameter]], ema_rate: float = 0.0
    ):
        if not trainable:
            raise ValueError(f"{type(self).__name__}: nothing to train in {type(module).__name__}")
        if not 0.0 <= ema_rate <= 1.0:
            raise SpecError("train.ema", f"must lie in [0, 1], got {ema_rate}")
        self.module = module
        # Fixed at construction: a later trainable_only() on a shared base must not change
        # which tensors this learner's optimiser state refers to.
        self._trainable = dict(trainable)
        self.ema_rate = ema_rate
        """EMA rate of the trained parameters; 0: no EMA (the last iterate is what counts)."""
        self._ema: dict[str, Tensor] = (
            {name: p.detach().clone() for name, p in self._trainable.items()} if ema_rate else {}
        )

    @property
    @abc.abstractmethod
    def obs_dim(self) -> int:
        """State dimension the batches must have."""

    @property
    @abc.abstractmethod
    def act_dim(self) -> int:
        """Action dimension the batches must have."""

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters, in the order the optimiser state refers to them."""
        return list(self._trainable.values())

    @abc.abstractmethod
    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms of a batch (raw states); "loss" is minimised."""

    def step_loss(self, data: OfflineData, batch_size: int, seed: int, step: int,
                  device: torch.device) -> dict[str, Tensor]:
        """The loss terms of training step `step` of run `seed`: its batch and its noise
        are drawn from (seed, step) alone (`library.training.step_rng`)."""
        with step_rng(seed, step, device) as generator:
            batch = {k: v.to(device) for k, v in data.sample(batch_size, generator).items()}
            return self.loss(self.with_rows_of(data, batch, device))

    def with_rows_of(self, data: OfflineData, batch: dict[str, Tensor],
                     device: torch.device) -> dict[str, Tensor]:
        """`batch`, drawn from `data`, with whatever this learner keeps per row of `data`
        (looked up by `batch["index"]`); the batch itself here."""
        return batch

    def to(self, device: torch.device | str) -> Learner:
        """Move what trains, and whatever the loss reads, to `device` (in place)."""
        self.module.to(device)
        return self

    def after_step(self) -> None:
        """Called once after every optimiser step: moves the EMA toward the new weights."""
        if self._ema:
            with torch.no_grad():
                for name, p in self._trainable.items():
                    self._ema[name].lerp_(p.detach(), self.ema_rate)

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside the block the trained parameters hold their EMA (nothing changes without
        one); the last iterate comes back on exit."""
        if not self._ema:
            yield
            return
        last = {name: p.detach().clone() for name, p in self._trainable.items()}
        with torch.no_grad():
            for name, p in self._trainable.items():
                p.copy_(self._ema[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self._trainable.items():
                    p.copy_(last[name])

    def _ema_state(self) -> dict[str, Tensor]:
        return {EMA_PREFIX + name: t.clone() for name, t in self._ema.items()}

    def _ema_keys(self) -> list[str]:
        """The keys `_ema_state` adds to a state dict."""
        return [EMA_PREFIX + name for name in self._ema]

    def _load_ema(self, state: dict[str, Tensor]) -> None:
        for name, t in self._ema.items():
            t.copy_(state[EMA_PREFIX + name])

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the trained tensors (and of their EMA, under "ema/"), by name."""
        own = {name: p.detach().clone() for name, p in self._trainable.items()}
        return {**own, **self._ema_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy `state` (from `state_dict()` of the same kind of learner) into place."""
        _check_keys(self, state.keys(), [*self._trainable, *self._ema_keys()])
        with torch.no_grad():
            for name, p in self._trainable.items():
                p.copy_(state[name])
            self._load_ema(state)


def _check_keys(learner: Learner, got, expected) -> None:
    missing, unexpected = set(expected) - set(got), set(got) - set(expected)
    if missing or unexpected:
        raise ShapeError(
            f"{type(learner).__name__} checkpoint does not match: missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}"
        )


def _freeze(*critics: nn.Module | None) -> None:
    for critic in critics:
        if critic is not None:
            critic.requires_grad_(False).eval()


class CriticLearner(Learner):
    """Fits IQL reward critics, a feasibility critic, or both on the same batches."""

    def __init__(self, iql: IQLCritics | None = None, feasibility: FeasibilityCritic | None = None):
        critics = {"iql": iql, "feasibility": feasibility}
        critics = {name: c for name, c in critics.items() if c is not None}
        if not critics:
            raise ValueError("CriticLearner needs at least one critic")
        module = nn.ModuleDict(critics)
        # Target twins are frozen copies; everything else (Q twins, V) trains.
        trainable = [(n, p) for n, p in module.named_parameters() if ".target_q_nets." not in n]
        for _, p in trainable:
            p.requires_grad_(True)
        super().__init__(module, trainable)
        self.critics: dict[str, IQLCritics | FeasibilityCritic] = critics

    @property
    def obs_dim(self) -> int:
        return next(iter(self.critics.values())).config.obs_dim

    @property
    def act_dim(self) -> int:
        return next(iter(self.critics.values())).config.act_dim

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        total = 0.0
        for name, critic in self.critics.items():
            own = critic.loss(batch)
            total = total + own.pop("loss")
            terms.update({f"{name}/{key}": value for key, value in own.items()})
        return {"loss": total, **terms}

    def after_step(self) -> None:
        for critic in self.critics.values():  # the targets are the critics' own EMA
            critic.update_target()

    def state_dict(self) -> dict[str, Tensor]:
        # The targets are part of what resumes; they are not trainable parameters.
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _check_keys(self, state.keys(), self.module.state_dict().keys())
        self.module.load_state_dict(state)


WEIGHT_CHUNK = 65536
"""Rows per critic pass when a dataset's weights are tabled (`_PolicyLearner.weight_table`)."""


class _PolicyLearner(Learner):
    """Shared by the policy learners: a weighting over frozen critics and the ε-loss."""

    def __init__(
        self,
        module: nn.Module,
        trainable: list[tuple[str, nn.Parameter]],
        policy: DiffusionPolicy,
        weighting: str,
        iql: IQLCritics | None,
        feasibility: FeasibilityCritic | None,
        weighting_config: WeightingConfig | None,
        ema_rate: float = 0.0,
    ):
        super().__init__(module, trainable, ema_rate)
        self.policy = policy
        _freeze(iql, feasibility)
        self.weigh = make_weighting(weighting, iql, feasibility, weighting_config)
        self.weighting = weighting
        # Critics are read, never trained: keep them out of `module` so their tensors
        # stay out of the optimiser, the state dict and DDP's gradient buckets.
        self.critics = (iql, feasibility)
        self._table: tuple[OfflineData, Tensor] | None = None  # (data, its weights)

    def to(self, device: torch.device | str) -> Learner:
        for critic in self.critics:
            if critic is not None:
                critic.to(device)
        return super().to(device)

    @property
    def obs_dim(self) -> int:
        return self.policy.config.obs_dim

    @property
    def act_dim(self) -> int:
        return self.policy.config.act_dim

    def with_rows_of(self, data: OfflineData, batch: dict[str, Tensor],
                     device: torch.device) -> dict[str, Tensor]:
        # A batch's weights: its rows of the table of `data` (none for `bc`).
        table = self.weight_table(data, device)
        return batch if table is None else {**batch, "weights": table[batch["index"]]}

    def weight_table(self, data: OfflineData, device: torch.device) -> Tensor | None:
        """w(s, a) of every transition of `data` [N] (None for `bc`), computed once per
        dataset: the critics are frozen, so a transition's weight never changes, and a
        batch's weights are its rows of this table — the same numbers as weighing the
        batch itself (the critics' layers give each row the same result in a chunk of
        WEIGHT_CHUNK rows as in a batch), without the critics' forward passes per step."""
        if self.weighting == "bc":
            return None
        if self._table is None or self._table[0] is not data:
            with torch.no_grad():
                weights = [self.weigh({"obs": data.obs[i:i + WEIGHT_CHUNK].to(device),
                                       "actions": data.actions[i:i + WEIGHT_CHUNK].to(device)})
                           for i in range(0, len(data), WEIGHT_CHUNK)]
            self._table = (data, torch.cat(weights))
        return self._table[1]

    def _weighted(self, loss_fn, batch: dict[str, Tensor], **options) -> dict[str, Tensor]:
        # [B], no grad: looked up when the batch was drawn from a dataset, else weighed here.
        weights = batch["weights"] if "weights" in batch else self.weigh(batch)
        terms = loss_fn(batch["obs"], batch["actions"], weights=weights, **options)
        return {**terms, "weight_mean": weights.mean(), "weight_max": weights.max(),
                "weight_ess": effective_sample_size(weights)}


class BaseLearner(_PolicyLearner):
    """Pretrains the whole diffusion policy (the base π0) with a weighting."""

    def __init__(
        self,
        policy: DiffusionPolicy,
        weighting: str = "bc",
        iql: IQLCritics | None = None,
        feasibility: FeasibilityCritic | None = None,
        weighting_config: WeightingConfig | None = None,
        ema_rate: float = EMA_RATE,
    ):
        policy.requires_grad_(True)
        super().__init__(
            policy, list(policy.named_parameters()), policy, weighting, iql, feasibility,
            weighting_config, ema_rate,
        )

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._weighted(self.policy.loss, batch, dropout=True)

    def state_dict(self) -> dict[str, Tensor]:
        # The whole policy, normaliser buffers included: a base is everything it holds.
        own = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
        return {**own, **self._ema_state()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _check_keys(self, state.keys(), [*self.policy.state_dict(), *self._ema_keys()])
        self.policy.load_state_dict({k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)})
        with torch.no_grad():
            self._load_ema(state)


class SkillLearner(_PolicyLearner):
    """Adds skill `name` to a frozen base and trains only its adapters.

    The base and every other skill are frozen (requires_grad False) and this skill alone
    is switched on in the loss, so nothing stored before can change.
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        name: str,
        rank: int = 8,
        alpha: float | None = None,
        kind: str = "lora",
        weighting: str = "bc",
        iql: IQLCritics | None = None,
        feasibility: FeasibilityCritic | None = None,
        weighting_config: WeightingConfig | None = None,
        generator: torch.Generator | None = None,
        ema_rate: float = EMA_RATE,
    ):
        add_skill(policy, name, rank=rank, alpha=alpha, kind=kind, generator=generator)
        mine = {id(p) for p in trainable_only(policy, name)}
        trainable = [(n, p) for n, p in policy.named_parameters() if id(p) in mine]
        super().__init__(policy, trainable, policy, weighting, iql, feasibility, weighting_config,
                         ema_rate)
        self.name = name

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        with use_skills(self.policy, [self.name]):
            return self._weighted(self.policy.loss, batch, dropout=True)


class StackedSkillLearner(_PolicyLearner):
    """Fits k new skills on one frozen base at once, as one batched computation.

    Training step s of fit j draws its batch from its own dataset and its noise from
    (seed_j, s), exactly as a `SkillLearner` fitted alone with that seed would; the k
    batches then go through the network as one, each block of rows with its own fit's
    skill alone switched on (`use_skills(..., blocks=True)`: the frozen layers' products
    are one GEMM over every fit's rows, the adapters' one batched product per factor),
    and the loss minimised is the sum of the fits' own losses. The skills share no
    parameter, and Adam and the EMA act element by element, so each skill trains as it
    would alone, to float rounding: the stacked products sum in another order. What a GPU
    gains from it is many small fits in one large one; the BC objective only (a weighted
    one would need each fit's critics).
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        names: list[str],
        rank: int = 8,
        alpha: float | None = None,
        kind: str = "lora",
        generators: list[torch.Generator | None] | None = None,
        ema_rate: float = EMA_RATE,
    ):
        if not names or len(set(names)) != len(names):
            raise SpecError("skills", f"must be distinct names, one per fit, got {names}")
        generators = generators or [None] * len(names)
        if len(generators) != len(names):
            raise SpecError("generators", f"one per skill: {len(names)}, got {len(generators)}")
        for name, generator in zip(names, generators):
            add_skill(policy, name, rank=rank, alpha=alpha, kind=kind, generator=generator)
        mine = {id(p) for name in names for p in trainable_only(policy, name)}
        for p in policy.parameters():  # each trainable_only froze the skills before it
            p.requires_grad_(id(p) in mine)
        trainable = [(n, p) for n, p in policy.named_parameters() if id(p) in mine]
        super().__init__(policy, trainable, policy, "bc", None, None, None, ema_rate)
        self.names = list(names)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """`batch`: k equal blocks of rows, block j for skill j; one noise draw for all."""
        actions = batch["actions"]
        if actions.shape[0] % len(self.names):
            raise ShapeError(f"a stacked batch of {actions.shape[0]} rows does not split "
                             f"into {len(self.names)} equal blocks")
        self.policy.check_inputs(batch["obs"], actions)
        return self._terms(batch["obs"], actions,
                           self.policy.draw_noise(actions, dropout=True))

    def step_loss(self, data: list[OfflineData], batch_size: int, seed: list[int], step: int,
                  device: torch.device) -> dict[str, Tensor]:
        """Fit j's batch (of `batch_size` rows) from `data[j]` and its noise from
        (seed[j], step): what a `SkillLearner` fitted alone on them would draw."""
        if len(data) != len(self.names) or len(seed) != len(self.names):
            raise SpecError("data", f"one dataset and one seed per skill ({len(self.names)}), "
                            f"got {len(data)} and {len(seed)}")
        obs, actions, draws = [], [], []
        for fit_data, fit_seed in zip(data, seed):
            with step_rng(fit_seed, step, device) as generator:
                batch = fit_data.sample(batch_size, generator)
                actions.append(batch["actions"].to(device))
                draws.append(self.policy.draw_noise(actions[-1], dropout=True))
            obs.append(batch["obs"].to(device))
        return self._terms(torch.cat(obs), torch.cat(actions), NoiseDraw.cat(draws))

    def _terms(self, obs: Tensor, actions: Tensor, draw: NoiseDraw) -> dict[str, Tensor]:
        k = len(self.names)
        with use_skills(self.policy, self.names, blocks=True):  # block j: skill j alone
            errors = self.policy.errors_of(obs, actions, draw)
        own = errors.view(k, -1).mean(dim=1)  # each fit's own loss
        detached = own.detach()
        return {"loss": own.sum(), "mse": errors.detach().mean(),
                **{f"{name}/loss": detached[j] for j, name in enumerate(self.names)}}


class ComposerLearner(_PolicyLearner):
    """Trains only θ of a composer's α(s) (or a `fixed` composer's constant weights)."""

    def __init__(
        self,
        composer: Composer,
        weighting: str = "bc",
        iql: IQLCritics | None = None,
        feasibility: FeasibilityCritic | None = None,
        weighting_config: WeightingConfig | None = None,
        action_draws: int | None = None,
    ):
        trainable = [(n, p) for n, p in composer.named_parameters() if p.requires_grad]
        super().__init__(
            composer, trainable, composer.policy, weighting, iql, feasibility, weighting_config,
        )
        if action_draws is not None:
            composer.require_action_mode("action_draws")  # now, not at the first step
        self.composer = composer
        self.action_draws = action_draws
        """Action mode: pool this many draws per skill and training state (None: fresh)."""
        self.pool: ActionPool | None = None
        """The pooled draws, sampled at the first training step from the run's seed (so a
        resumed run samples the same pool)."""

    def step_loss(self, data: OfflineData, batch_size: int, seed: int, step: int,
                  device: torch.device) -> dict[str, Tensor]:
        if self.action_draws is not None and self.pool is None:
            self.pool = self.composer.action_pool(data.obs.to(device), self.action_draws, seed)
        return super().step_loss(data, batch_size, seed, step, device)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # The composer's terms include "alpha/<skill>": how the composition spreads over
        # the skills, logged to see what α learned.
        if self.pool is None:
            return self._weighted(self.composer.loss, batch)
        return self._weighted(self.composer.loss, batch,
                              skill_actions=self.pool.pick(batch["index"]))
