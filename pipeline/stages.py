"""What each stage of a fit unit builds from the library, and how stored items act.

With pipeline/acting.py the only place where the pipeline touches the algorithm: it turns
a `Stage` into a `library.learners` learner (critics, base, skill, composer) and the
trained learner into a store item (`library.serialization`); pipeline/acting.py turns a
stored item back into a policy that acts in an env.

Critics are not an item kind of their own: they belong to the task whose data they were
fitted on and are stored inside that task's base or skill item (library/serialization.py,
"Critics inside items"). A composer of that task, fitted in another unit, reads them from
there; so does IDQL candidate selection at evaluation time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor

from library.composition import AlphaConfig, Composer
from library.critics import (
    CriticConfig,
    FeasibilityConfig,
    FeasibilityCritic,
    IQLCritics,
    reward_scale,
)
from library.data import OfflineData
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.learners import BaseLearner, ComposerLearner, CriticLearner, Learner, SkillLearner
from library.lora import add_random_skill, remove_skill
from library.names import BASE
from library.serialization import (
    LAST_PREFIX,
    build_critics,
    critics_from_item,
    dump_base,
    dump_composer,
    dump_critics,
    dump_skill,
    load_base,
    load_critic_state,
    load_skill,
    split_item,
)
from library.weighting import WeightingConfig
from pipeline.curves import Snapshot
from pipeline.plan import FitUnit, Stage
from tasks.spec import TaskSpec, dump
from tasks.spec_sections import FEASIBILITY_OBJECTIVES

ALPHA_SAMPLE = 512
"""States on which a composer's α(s) statistics are logged."""


def random_skill_name(composer: str, skill: str) -> str:
    """Store name of the random stand-in for `skill` in composer `composer`'s random bank
    (`<skill>-random-<6 hex of both names>`: readable, unique per composer, ≤ 64)."""
    digest = hashlib.sha256(f"{composer}/{skill}".encode()).hexdigest()[:6]
    return f"{skill[:48]}-random-{digest}"


# ------------------------------------------------------------------- critics in items


def _critic_configs(task: TaskSpec, obs_dim: int, act_dim: int, table) -> dict[str, Any]:
    """The critics the task's objectives (its own and its composers') need, as CriticConfig /
    FeasibilityConfig; the reward scale comes from the episodes of `table`, the task's
    dataset."""
    critic = task.critic
    configs: dict[str, Any] = {}
    objectives = task.objectives
    if objectives & {"advantage", "reward+feasibility"}:
        configs["iql"] = CriticConfig(obs_dim=obs_dim, act_dim=act_dim,
                                      discount=critic.discount, expectile=critic.expectile,
                                      reward_scale=_reward_scale(task, table),
                                      stop_at_timeouts=critic.stop_at_timeouts)
    if objectives & set(FEASIBILITY_OBJECTIVES):
        configs["feasibility"] = FeasibilityConfig(obs_dim=obs_dim, act_dim=act_dim,
                                                   discount=critic.discount,
                                                   stop_at_timeouts=critic.stop_at_timeouts)
    return configs


def _reward_scale(task: TaskSpec, table) -> float:
    """CriticSpec.reward_norm as a factor: horizon / (max − min episode return), or 1."""
    if task.critic.reward_norm == "none":
        return 1.0
    from tasks.dataset import episode_totals, to_arrays
    from tasks.suites import get_suite

    horizon = task.horizon or get_suite(task.suite).default_horizon(task.env)
    _, returns, _ = episode_totals(to_arrays(table))
    return reward_scale(list(returns), horizon)


# ------------------------------------------------------------------ a unit's stages


def alpha_stats(composer: Composer, obs: Tensor) -> dict[str, float]:
    """`<skill>/mean` and `<skill>/std` of each skill's weight α_i(s) over the first
    ALPHA_SAMPLE states of `obs` [N, S] (raw): what a composer fit logs, and what
    scripts/alpha_weights.py reads back from a stored composer."""
    obs = obs[:ALPHA_SAMPLE]
    with torch.no_grad():
        alpha = composer.alpha(obs)  # [B, k]
    stats = {}
    for index, skill in enumerate(composer.skills):
        stats[f"{skill}/mean"] = float(alpha[:, index].mean())
        stats[f"{skill}/std"] = float(alpha[:, index].std()) if len(obs) > 1 else 0.0
    return stats


def fit_table(store, task: TaskSpec, dataset: str):
    """The table of stored dataset `dataset` as a fit of `task` reads it (`fit_rows`)."""
    return fit_rows(task, store.get_dataset(dataset))


def fit_rows(task: TaskSpec, table):
    """What a fit of `task` reads of its dataset's `table`: cut to the task's
    `max_transitions` when the task takes a stored dataset."""
    from tasks.dataset import limit_transitions

    if task.data.source == "store" and task.data.max_transitions is not None:
        table = limit_transitions(table, task.data.max_transitions)
    return table


class UnitContext:
    """A worker's view of one fit unit: its data, its critics, the items it builds on."""

    def __init__(self, store, unit: FitUnit, device: torch.device, rank: int = 0):
        from tasks.dataset import fingerprint, to_offline_data

        self.store = store
        self.unit = unit
        self.task = unit.task
        self.device = device
        self.rank = rank
        table = fit_table(store, self.task, unit.dataset)
        self.table = table
        self.data = to_offline_data(table)
        self._subsets: dict[str, OfflineData] = {}  # composer name -> its ComposerSpec.data
        for stage in unit.stages:
            self.data_for(stage)  # a subset no episode qualifies for fails before any fit
        self.fingerprint = fingerprint(table) if rank == 0 else None
        self.weighting = WeightingConfig(beta=self.task.critic.beta)
        self.iql: IQLCritics | None = None
        self.feasibility: FeasibilityCritic | None = None
        self._critics_fitted_here = False
        self._built: dict[str, Any] = {}  # stage name -> the trained policy / composer

    # ---- what stages build on

    def _normalizer(self) -> StateNormalizer:
        """The base's normaliser: from the store for a skill or composer task and for a base
        that starts from a stored one (`init`), from the data for any other base task
        (computed exactly as the base stage computes it)."""
        if self.task.role != "base" or self.task.init is not None:
            config, tensors = self.store.load(self.task.base or self.task.init)
            return load_base(config, split_item(tensors)[0]).normalizer
        return StateNormalizer.from_data(self.data.obs)

    def _base_policy(self) -> DiffusionPolicy:
        """A fresh copy of the stored base (each stage adds its own skills to it)."""
        config, tensors = self.store.load(self.task.base)
        return load_base(config, split_item(tensors)[0])

    def _add_skill(self, policy: DiffusionPolicy, name: str) -> None:
        config, tensors = self.store.load(name)
        load_skill(policy, name, config, split_item(tensors)[0])

    def _ensure_critics(self) -> None:
        """Critics of a task whose critics stage ran in another unit or an earlier run."""
        if not self.task.needs_critic or self.iql is not None or self.feasibility is not None:
            return
        config, tensors = self.store.load(self.task.name)
        own, critic_tensors = split_item(tensors)
        normalizer = (load_base(config, own).normalizer if self.task.role == "base"
                      else self._normalizer())
        self.iql, self.feasibility = critics_from_item(config, critic_tensors, normalizer)
        self._to_device()

    def _to_device(self) -> None:
        for critic in (self.iql, self.feasibility):
            if critic is not None:
                critic.to(self.device)

    # ---- the harness's interface (pipeline.unit_loop)

    def data_for(self, stage: Stage) -> OfflineData:
        """What `stage` trains on: the task's dataset, or a composer's subset of it."""
        if stage.kind != "composer" or stage.composer.data.selects_all:
            return self.data
        if stage.name not in self._subsets:
            from tasks.dataset import to_offline_data
            from tasks.subsets import composer_subset

            table = composer_subset(self.table, stage.composer.data, stage.name)
            self._subsets[stage.name] = to_offline_data(table)
        return self._subsets[stage.name]

    def already_stored(self, stage: Stage) -> bool:
        if stage.kind == "critics":
            # Critics are stored inside the task's item: fitted iff it exists.
            return self.store.exists(self.task.name)
        return self.store.exists(stage.name)

    def skip(self, stage: Stage) -> None:
        """A stage found in the store; later stages of the unit may need its critics."""
        if stage.kind == "critics":
            self._ensure_critics()

    def build(self, stage: Stage) -> Learner:
        generator = torch.Generator().manual_seed(stage.seed)
        obs_dim, act_dim = self.data.obs_dim, self.data.act_dim
        if stage.kind == "critics":
            iql, feasibility = build_critics(
                _critic_configs(self.task, obs_dim, act_dim, self.table), self._normalizer())
            return CriticLearner(iql, feasibility)
        self._ensure_critics()
        critics = {"iql": self.iql, "feasibility": self.feasibility,
                   "weighting_config": self.weighting}
        if stage.kind == "base":
            if self.task.init is not None:  # fine-tuning: every weight of a stored base
                config, tensors = self.store.load(self.task.init)
                policy = load_base(config, split_item(tensors)[0])
            else:
                policy = DiffusionPolicy(PolicyConfig(obs_dim=obs_dim, act_dim=act_dim,
                                                      **self.task.network.model_dump()),
                                         StateNormalizer.from_data(self.data.obs))
            return BaseLearner(policy, self.task.objective, ema_rate=self.task.train.ema,
                               **critics)
        if stage.kind == "skill":
            lora = self.task.lora
            return SkillLearner(self._base_policy(), stage.name, rank=lora.rank,
                                alpha=lora.alpha, kind=lora.kind, weighting=self.task.objective,
                                generator=generator, ema_rate=self.task.train.ema, **critics)
        policy = self._base_policy()
        skills = [self._composed_skill(policy, stage, index, skill)
                  for index, skill in enumerate(stage.skills)]
        composer = Composer(policy, skills, stage.composer.mode,
                            AlphaConfig(**stage.composer.alpha.model_dump()),
                            generator=generator)
        return ComposerLearner(composer, self.task.composer_objective(stage.composer),
                               action_draws=stage.composer.action_draws, **critics)

    def _composed_skill(self, policy: DiffusionPolicy, stage: Stage, index: int,
                        skill: str) -> str:
        """Put the `index`-th skill of a composer stage on `policy`; the name it composes.

        In a random bank (`bank: random`) a stored skill is replaced by a random LoRA of its
        per-layer norms, drawn from the stage seed (or loaded, once registered), and
        registered beside the composer so that the composer loads like any other."""
        if skill == BASE:
            return skill
        self._add_skill(policy, skill)
        if stage.composer.bank == "stored" or skill == self.task.name:
            return skill
        name = random_skill_name(stage.name, skill)
        if self.store.exists(name):
            self._add_skill(policy, name)
        else:
            # Its own draw per position (a prime stride keeps the seeds apart), reproducible
            # from the stage seed so a resumed fit rebuilds the same bank.
            generator = torch.Generator().manual_seed(stage.seed + 104729 * (index + 1))
            add_random_skill(policy, name, like=skill, generator=generator)
        remove_skill(policy, skill)
        return name

    def finished(self, stage: Stage, learner: Learner) -> None:
        """After a stage trained (and rank 0 registered it)."""
        if stage.kind == "critics":
            assert isinstance(learner, CriticLearner)
            self.iql = learner.critics.get("iql")  # type: ignore[assignment]
            self.feasibility = learner.critics.get("feasibility")  # type: ignore[assignment]
            self._critics_fitted_here = True
            for critic in (self.iql, self.feasibility):
                if critic is not None:
                    critic.requires_grad_(False).eval()

    def carry(self) -> dict[str, Tensor]:
        """What a checkpoint must hold beyond the current learner: critics fitted in this
        unit that are not in the store yet."""
        if not self._critics_fitted_here:
            return {}
        return {k: v.cpu() for k, v in dump_critics(self.iql, self.feasibility).items()}

    def restore_carry(self, carry: dict[str, Tensor]) -> None:
        if not carry:
            return
        configs = _critic_configs(self.task, self.data.obs_dim, self.data.act_dim, self.table)
        self.iql, self.feasibility = build_critics(configs, self._normalizer())
        for name, critic in (("iql", self.iql), ("feasibility", self.feasibility)):
            if critic is not None:
                load_critic_state(critic, name, carry)
                critic.requires_grad_(False).eval()
        self._critics_fitted_here = True
        self._to_device()

    def alpha_stats(self, stage: Stage, learner: Learner) -> dict[str, float]:
        """Mean and std over states of each skill's weight α_i(s) (composer stages)."""
        if stage.kind != "composer":
            return {}
        assert isinstance(learner, ComposerLearner)
        return alpha_stats(learner.composer, self.data.obs[:ALPHA_SAMPLE].to(self.device))

    def register(self, stage: Stage, learner: Learner, metrics: dict[str, Any]) -> bool:
        """Rank 0: store the stage's item through the store actor; False if it was there."""
        learner.module.to("cpu")
        if stage.kind in ("base", "skill"):
            config, tensors = self.policy_item_with_critics(stage, learner)
        else:
            assert isinstance(learner, ComposerLearner)
            self._register_random_bank(stage, learner)
            config, tensors = dump_composer(learner.composer)
        _, created = self.store.register_once(
            stage.name, stage.kind, config, tensors, parent=stage.parent,
            task_spec=dump(self.task), dataset_fingerprint=self.fingerprint, metrics=metrics)
        learner.module.to(self.device)
        return created

    def snapshot(self, stage: Stage, learner: Learner) -> Snapshot:
        """A base or skill stage's weights now, as the item it would register (for its
        learning curve, pipeline.curves), on the CPU."""
        config, tensors = self.policy_item_with_critics(stage, learner)
        return Snapshot(stage.kind, stage.name, stage.parent, config,
                        {key: value.detach().cpu().clone() for key, value in tensors.items()})

    def policy_item_with_critics(self, stage: Stage, learner: Learner
                                 ) -> tuple[dict, dict[str, Tensor]]:
        """`policy_item`, with the task's critics inside when it has any."""
        config, tensors = self.policy_item(stage, learner)
        critics = [(name, critic) for name, critic in
                   (("iql", self.iql), ("feasibility", self.feasibility)) if critic is not None]
        if not critics:
            return config, tensors
        config = {**config, "critics": {name: critic.config.to_dict() for name, critic in critics}}
        return config, {**tensors, **dump_critics(self.iql, self.feasibility)}

    @staticmethod
    def policy_item(stage: Stage, learner: Learner) -> tuple[dict, dict[str, Tensor]]:
        """A base or skill item: the EMA weights (what loads, evaluates and composes), with
        the last iterate kept beside them under LAST_PREFIX; the config says which is which."""
        assert isinstance(learner, BaseLearner | SkillLearner)

        def dump_now() -> tuple[dict, dict[str, Tensor]]:
            if stage.kind == "base":
                return dump_base(learner.policy)
            return dump_skill(learner.policy, stage.name, base_name=stage.parent)

        config, last = dump_now()
        if not learner.ema_rate:
            return {**config, "weights": "last"}, last
        with learner.ema_weights():
            config, tensors = dump_now()
        tensors.update({LAST_PREFIX + key: value for key, value in last.items()})
        return {**config, "weights": "ema", "ema_rate": learner.ema_rate}, tensors

    def _register_random_bank(self, stage: Stage, learner: ComposerLearner) -> None:
        """The random stand-ins of a random-bank composer, before the composer itself."""
        stand_ins = {random_skill_name(stage.name, skill): skill for skill in stage.skills}
        for composed in learner.composer.skills:
            skill = stand_ins.get(composed)
            if skill is None:
                continue  # a stored skill, the task's own, or "base"
            config, tensors = dump_skill(learner.composer.policy, composed,
                                         base_name=stage.parent)
            self.store.register_once(
                composed, "skill", config, tensors, parent=stage.parent,
                metrics={"random_like": skill, "composer": stage.name})


# ------------------------------------------------------------------- acting in an env


