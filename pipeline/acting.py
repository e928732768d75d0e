"""How a stored item acts: a base, skill or composer loaded from the store as
`obs -> action` (IDQL selection over candidates when its task stored critics), for the
evaluation tasks and the α(s) traces."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from library.composition import Composer
from library.diffusion import DiffusionPolicy, Noise, select_action
from library.errors import StoreError
from library.lora import use_skills
from library.names import BASE
from library.serialization import critics_from_item, load_base, load_skill, split_item
from library.serialization import load_composer as composer_from_item

MIN_ROWS = 16
"""Every acting call runs at least this many rows, padding with copies of the first
state (their noise from a generator of their own, so no episode's noise changes). A CPU
GEMM computes a row the same at every batch size above some size and differently (in the
last bits) below it, and the size depends on the CPU's kernels (measured with torch
2.13: from 4 rows on the AMD EPYC dev boxes, from 11 on an Intel Xeon with AVX-512, where
8 rows and 11+ differ; asserted in tests/test_batched_evaluation.py): padding makes an
episode's actions the same whether it is rolled out alone or side by side with others."""


class Acting:
    """A stored policy acting in an env: obs -> action, its sampling noise drawn from
    generators of its own. `__call__` acts for one state with `generator`, which
    `reseed(seed)` restarts; `batch` acts for several episodes at once, each with its own
    generator, and gives each the action it would get alone."""

    def __init__(self, sample: Callable[[Tensor, Noise], Tensor], seed: int,
                 rows_per_state: int = 1):
        self._sample = sample  # obs [B, S], noise (one generator per state) -> actions [B, A]
        self._rows_per_state = rows_per_state  # policy rows one state costs (IDQL candidates)
        self.generator = torch.Generator().manual_seed(seed)
        self._padding = torch.Generator().manual_seed(0)  # noise of the padding rows only

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        return self.batch(np.asarray(obs, dtype=np.float32)[None], [self.generator])[0]

    @torch.inference_mode()
    def batch(self, obs: np.ndarray, generators: list[torch.Generator]) -> np.ndarray:
        """Actions [E, A] for the states obs [E, S] of E episodes, state e's noise drawn
        from generators[e]."""
        states = torch.as_tensor(np.asarray(obs, dtype=np.float32)).reshape(len(generators), -1)
        padding = max(0, math.ceil(MIN_ROWS / self._rows_per_state) - len(generators))
        if padding:
            states = torch.cat([states, states[:1].expand(padding, -1)])
        actions = self._sample(states, [*generators, *[self._padding] * padding])
        return actions[: len(generators)].numpy()


def load_acting(store, name: str, n_candidates: int = 1, seed: int = 0) -> Acting:
    """A stored base, skill or composer as `obs [S] -> action [A]` (IDQL selection over
    `n_candidates` samples when its task stored critics), its noise seeded with `seed`."""
    entry = store.entry(name)
    config, tensors = store.load(name)
    return acting_from_item(store, entry.kind, name, config, tensors, parent=entry.parent,
                            task_name=(entry.task_spec or {}).get("name"),
                            n_candidates=n_candidates, seed=seed)


def acting_from_item(store, kind: str, name: str, config: dict, tensors: dict[str, Tensor],
                     parent: str | None = None, task_name: str | None = None,
                     n_candidates: int = 1, seed: int = 0) -> Acting:
    """An item given as its config and tensors (stored or not: a fit's snapshot) acting as
    `load_acting`'s; a skill's or composer's `parent` base and a composer's skills and
    critics (its task `task_name`'s item) come from `store`."""
    own, critic_tensors = split_item(tensors)
    critics_config: dict = config
    if kind == "base":
        policy = load_base(config, own)
        sample_policy: Callable[[Tensor, Noise], Tensor] = policy.sample
    else:
        base_config, base_tensors = store.load(parent)
        policy = load_base(base_config, split_item(base_tensors)[0])
        if kind == "skill":
            load_skill(policy, name, config, own)

            def sample_policy(obs: Tensor, generator: Noise) -> Tensor:
                with use_skills(policy, [name]):
                    return policy.sample(obs, generator)
        else:
            composer = _composer_on(store, policy, config, own)
            sample_policy = composer.sample
            critics_config, critic_tensors = composer_critics(store, task_name, config,
                                                              critic_tensors)
    policy.eval()
    q_fn, minimize = candidate_ranking(
        *critics_from_item(critics_config, critic_tensors, policy.normalizer))

    def sample(batch: Tensor, noise: Noise) -> Tensor:
        return select_action(lambda o: sample_policy(o, noise), batch, n_candidates,
                             q_fn=q_fn, minimize=minimize)

    return Acting(sample, seed, n_candidates if q_fn is not None else 1)


def composer_critics(store, task_name: str | None, config: dict,
                     critic_tensors: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """(config, critic tensors) holding a composer's critics: its task's, stored in that
    task's skill item; the composer's own item (which holds none) if that is not stored."""
    if task_name and store.exists(task_name):
        task_config, task_tensors = store.load(task_name)
        return task_config, split_item(task_tensors)[1]
    return config, critic_tensors


def candidate_ranking(iql, feasibility) -> tuple[Callable[[Tensor, Tensor], Tensor] | None, bool]:
    """(q_fn, minimize) that `select_action` ranks candidates by: the lowest safety Q where
    the task has a feasibility critic, else the highest reward Q, else none (one sample)."""
    if feasibility is not None:
        return feasibility.q, True
    return (iql.q if iql is not None else None), False


def _composer_on(store, policy: DiffusionPolicy, config: dict, tensors: dict[str, Tensor]
                 ) -> Composer:
    """A stored composer's item on `policy` (its base), with the skills it composes."""
    for skill in config.get("skills", []):
        if skill != BASE:
            skill_config, skill_tensors = store.load(skill)
            load_skill(policy, skill, skill_config, split_item(skill_tensors)[0])
    return composer_from_item(policy, config, tensors)


def load_composer(store, name: str) -> Composer:
    """The stored composer `name` on its base with its skills, in eval mode (for α(s))."""
    entry = store.entry(name)
    if entry.kind != "composer":
        raise StoreError(f"{name!r} is a {entry.kind}, not a composer")
    config, tensors = store.load(name)
    base_config, base_tensors = store.load(entry.parent)
    policy = load_base(base_config, split_item(base_tensors)[0])
    composer = _composer_on(store, policy, config, split_item(tensors)[0])
    composer.eval()
    return composer
