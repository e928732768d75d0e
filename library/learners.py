"""Learners: what trains, and its loss over a batch. The training loop owns the optimiser.

Every learner exposes the same small surface, which is all `library.training.train` and
the pipeline's Ray Train stages touch:

* `module` — the nn.Module that holds what trains; `to(device)` moves it and the critics;
* `parameters()` — the trainable parameters only, in a fixed order (the optimiser's);
* `loss(batch) -> dict[str, Tensor]` — named terms; "loss" is the one minimised;
* `after_step()` — bookkeeping after each optimiser step (critics: target networks);
* `state_dict()` / `load_state_dict()` — copies of what a checkpoint must hold to resume.

| learner | trains | loss |
| --- | --- | --- |
| `CriticLearner` | IQL critics and/or the feasibility critic | IQL / HJ losses, summed |
| `BaseLearner` | the whole diffusion policy | weighted ε-loss |
| `SkillLearner` | one new skill's adapters on the frozen base | weighted ε-loss with only that skill on |
| `ComposerLearner` | θ of the composer's α(s) (or its constant weights) | weighted ε-loss of the composed policy |

Weighted objectives take critics that are already fitted: they are frozen here and only
read, through `library.weighting.make_weighting`.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from library.critics import FeasibilityCritic, IQLCritics
from library.diffusion import DiffusionPolicy
from library.errors import ShapeError
from library.lora import add_skill, trainable_only, use_skills
from library.weighting import WeightingConfig, make_weighting

if TYPE_CHECKING:
    from library.composition import Composer


class Learner(abc.ABC):
    """What one fit trains, and its loss."""

    module: nn.Module
    """The module holding every trained parameter."""

    def __init__(self, module: nn.Module, trainable: list[tuple[str, nn.Parameter]]):
        if not trainable:
            raise ValueError(f"{type(self).__name__}: nothing to train in {type(module).__name__}")
        self.module = module
        # Fixed at construction: a later trainable_only() on a shared base must not change
        # which tensors this learner's optimiser state refers to.
        self._trainable = dict(trainable)

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

    def to(self, device: torch.device | str) -> Learner:
        """Move what trains, and whatever the loss reads, to `device` (in place)."""
        self.module.to(device)
        return self

    def after_step(self) -> None:  # noqa: B027 - most learners have nothing to do here
        """Called once after every optimiser step."""

    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the trained tensors, by name."""
        return {name: p.detach().clone() for name, p in self._trainable.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Copy `state` (from `state_dict()` of the same kind of learner) into place."""
        _check_keys(self, state.keys(), self._trainable.keys())
        with torch.no_grad():
            for name, p in self._trainable.items():
                p.copy_(state[name])


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
        for critic in self.critics.values():
            critic.update_target()

    def state_dict(self) -> dict[str, Tensor]:
        # The targets are part of what resumes; they are not trainable parameters.
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _check_keys(self, state.keys(), self.module.state_dict().keys())
        self.module.load_state_dict(state)


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
    ):
        super().__init__(module, trainable)
        self.policy = policy
        _freeze(iql, feasibility)
        self.weigh = make_weighting(weighting, iql, feasibility, weighting_config)
        # Critics are read, never trained: keep them out of `module` so their tensors
        # stay out of the optimiser, the state dict and DDP's gradient buckets.
        self.critics = (iql, feasibility)

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

    def _weighted(self, loss_fn, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        weights = self.weigh(batch)  # [B], no grad
        terms = loss_fn(batch["obs"], batch["actions"], weights=weights)
        return {**terms, "weight_mean": weights.mean(), "weight_max": weights.max()}


class BaseLearner(_PolicyLearner):
    """Pretrains the whole diffusion policy (the base π0) with a weighting."""

    def __init__(
        self,
        policy: DiffusionPolicy,
        weighting: str = "bc",
        iql: IQLCritics | None = None,
        feasibility: FeasibilityCritic | None = None,
        weighting_config: WeightingConfig | None = None,
    ):
        policy.requires_grad_(True)
        super().__init__(
            policy, list(policy.named_parameters()), policy, weighting, iql, feasibility,
            weighting_config,
        )

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._weighted(self.policy.loss, batch)

    def state_dict(self) -> dict[str, Tensor]:
        # The whole policy, normaliser buffers included: a base is everything it holds.
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        _check_keys(self, state.keys(), self.policy.state_dict().keys())
        self.policy.load_state_dict(state)


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
    ):
        add_skill(policy, name, rank=rank, alpha=alpha, kind=kind, generator=generator)
        mine = {id(p) for p in trainable_only(policy, name)}
        trainable = [(n, p) for n, p in policy.named_parameters() if id(p) in mine]
        super().__init__(policy, trainable, policy, weighting, iql, feasibility, weighting_config)
        self.name = name

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        with use_skills(self.policy, [self.name]):
            return self._weighted(self.policy.loss, batch)


class ComposerLearner(_PolicyLearner):
    """Trains only θ of a composer's α(s) (or a `fixed` composer's constant weights)."""

    def __init__(
        self,
        composer: Composer,
        weighting: str = "bc",
        iql: IQLCritics | None = None,
        feasibility: FeasibilityCritic | None = None,
        weighting_config: WeightingConfig | None = None,
    ):
        trainable = [(n, p) for n, p in composer.named_parameters() if p.requires_grad]
        super().__init__(
            composer, trainable, composer.policy, weighting, iql, feasibility, weighting_config,
        )
        self.composer = composer

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        terms = self._weighted(self.composer.loss, batch)
        with torch.no_grad():
            mean_alpha = self.composer.alpha(batch["obs"]).mean(dim=0)  # [k]
        # How the composition spreads over the skills, logged to see what α learned.
        for i, name in enumerate(self.composer.skills):
            terms[f"alpha/{name}"] = mean_alpha[i]
        return terms
