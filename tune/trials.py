"""Trial points and what each one runs: a method is a transformation of the stream's spec.

A *trial point* is one method on one target with one rank, data size, α choice and seed
(and, where the search varies them, the composer's weighting and data).
It becomes a one-task plan on top of the store (`pipeline.plan.plan_task`):

* psec / nsec / asec / fixed / uniform / random: the target task renamed
  `<task>_<skill tag>`, its LoRA at the point's rank, its data the stored dataset of the
  wanted size, and exactly one composer `<composer>_<tag>` in the method's mode over the
  stored skills at that rank (uniform: registered untrained; random: over a random-LoRA
  bank of the stored skills' norms);
* mlp: the same with full-rank adapters (`lora.kind: full`) for the new skill and for
  every stored skill it composes, composed at the parameter level (PSEC(MLP));
* scratch: a base policy `<task>_<tag>` fitted on the target's data alone (with the
  target's objective); bc: the same with the plain diffusion loss (both on the
  composer's subset when it trains on one, `ComposerSpec.data`: e.g. BC-Safe); fisor: a
  base policy fitted on the target's whole data with FISOR's weighting
  (`reward+feasibility`, its critics fitted first); joint: a base policy
  fitted, with the target's objective and the base's training budget, on the stored union
  `<target dataset>-joint` of the target's data and the data its base was pretrained on
  (made once, before the trials: `joint_datasets`).

The stored skills a target composes are refitted once per adapter variant as
`<skill>_lora<r>` / `<skill>_full` (without composers, on the skill task's own stored
data) and shared by every trial; so is the base. `<tag>` is a hash of the point, so a
trial run again (a restored search, or a new search with an overlapping grid) finds its
items and results in the store and does nothing twice. The new skill's `<skill tag>`
hashes only what its fit depends on (task, adapter variant, data size, seed), so trials
of different methods and α choices share one fit of it. Its results rows carry the
stream name `<search>_<tag>` and the tags `search` and `trial` (`<tag>`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from library.names import BASE
from pipeline.plan import dataset_name
from tasks.spec import StreamSpec, TaskSpec, dump, parse_task
from tasks.spec_sections import (
    CRITIC_OBJECTIVES,
    AlphaSpec,
    ComposerData,
    ComposerSpec,
    DataSpec,
)
from tune.spec import FROM_SCRATCH, MODE, SearchSpec, find_composer


class TrialPoint(BaseModel):
    """One point of a search: what one trial fits and evaluates."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    target: str
    """Label of the target (a `TargetSpec.label`)."""
    task: str
    """Name of the target's task in the stream (the task whose skill is new)."""
    method: str
    """psec | nsec | asec | mlp | scratch | fixed | uniform | random | bc | joint."""
    rank: int | None
    """LoRA rank of every skill involved; None for mlp, scratch, bc and joint."""
    episodes: int | None
    """Trajectories of the target's data; None = the stream's count."""
    alpha: AlphaSpec | None
    """α parameterisation of the composer; None for scratch, bc and joint."""
    seed: int
    """Training seed of the target's skill and composer (or of the new policy)."""
    objective: str | None = None
    """The composer's sample weighting where the search sets one (`composer_objectives`);
    None: the stream's."""
    composer_data: Literal["all"] | None = None
    """`all`: the composer trains on every episode of the target's data
    (`composer_data`); None: on what the stream's composer `data` selects."""

    def tag(self) -> str:
        """8 hex digits naming the point's items and stream (stable across runs).

        A scratch (bc, joint) policy depends on the task and its data only (joint: and on
        the task's base), not on the skills a target composes: S→R and S+W→R share theirs
        (one fit, one set of rows)."""
        identity = self.model_dump(mode="json")
        if self.method in FROM_SCRATCH:
            identity.pop("target")
        if identity["alpha"] is not None and not identity["alpha"]["reg"]:
            identity["alpha"].pop("reg")  # points from before the regulariser keep their tags
        if identity["objective"] is None:
            identity.pop("objective")  # points from before the objective axis keep theirs
        if identity["composer_data"] is None:
            identity.pop("composer_data")  # and those from before the data axis theirs
        return _digest(identity)

    def skill_tag(self) -> str:
        """8 hex digits naming the trial's new skill (scratch, bc, joint: its policy, as
        `tag`).

        Only what the skill's fit depends on enters: the task, the adapter variant, the
        data size and the seed. Every method and α choice on those shares one fit."""
        if self.method in FROM_SCRATCH:
            return self.tag()
        identity = {"task": self.task, "variant": self.variant, "episodes": self.episodes,
                    "seed": self.seed}
        if self.objective in CRITIC_OBJECTIVES:
            # The skill's item then holds the critics its composer weighs with.
            identity["critics"] = self.objective
        return _digest(identity)

    @property
    def variant(self) -> str | None:
        """Adapter variant of the stored skills: `lora<r>`, `full`, or None (scratch, bc,
        joint: no skill)."""
        if self.method in FROM_SCRATCH:
            return None
        return "full" if self.method == "mlp" else f"lora{self.rank}"

    def describe(self) -> str:
        parts = [self.method, self.target]
        if self.rank is not None:
            parts.append(f"rank {self.rank}")
        if self.episodes is not None:
            parts.append(f"{self.episodes} trajectories")
        if self.alpha is not None:
            parts.append(alpha_label(self.alpha))
        composer = self.composer_label()
        if composer is not None:
            parts.append(f"composer {composer}")
        parts.append(f"seed {self.seed}")
        return ", ".join(parts)

    def composer_label(self) -> str | None:
        """How the composer trains where the search changes it from the stream's
        (`composer_label`)."""
        return composer_label(self.objective, self.composer_data)


def composer_label(objective: str | None, composer_data: str | None) -> str | None:
    """How a composer trains where a search changes it from the stream's: its weighting
    and/or `on all data` (`composer_data` all); None where it trains as the stream says."""
    parts = [objective] if objective is not None else []
    if composer_data == "all":
        parts.append("on all data")
    return " ".join(parts) or None


def _digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]


UNIFORM_ALPHA = AlphaSpec(output="raw", init="uniform", scale=1.0)
"""The uniform-α control: α_i = 1/k exactly, a fixed composer registered untrained."""


def alpha_label(alpha: AlphaSpec) -> str:
    """`softmax/newest` (and `×s` when the scale is not 1, `+reg r` with a regulariser)."""
    label = f"{alpha.output}/{alpha.init}"
    if alpha.scale != 1.0:
        label += f"×{alpha.scale:g}"
    return label if not alpha.reg else f"{label}+reg {alpha.reg:g}"


def alpha_file_tag(alpha: AlphaSpec | None) -> str:
    """`-raw-zero` for a file name (`-raw-newest-reg1` with a regulariser); '' for None."""
    if alpha is None:
        return ""
    return "-" + "".join(c if c.isalnum() or c == "." else "-" for c in
                         alpha_label(alpha).replace(" ", "").replace("+", "-"))


def enumerate_points(search: SearchSpec) -> list[TrialPoint]:
    """Every trial point of the search (scale applied), without repeats."""
    stream = search.load_stream()
    points: list[TrialPoint] = []
    for target in search.targets:
        task, composer = find_composer(stream, target.composer, "targets")
        # `all` is the stream's own choice where the composer trains on everything.
        data_choices = list(dict.fromkeys(
            "all" if choice == "all" and not composer.data.selects_all else None
            for choice in search.composer_data))
        for method in search.target_methods(target):
            ranks: list[int | None] = ([None] if method == "mlp" or method in FROM_SCRATCH
                                       else list(search.ranks))
            if method in FROM_SCRATCH:
                alphas: list[AlphaSpec | None] = [None]
            elif method == "fixed":
                alphas = list(search.fixed_alpha)
            elif method == "uniform":
                alphas = [UNIFORM_ALPHA]
            else:  # psec, nsec, asec, mlp and the random bank that controls them
                alphas = list(search.alpha)
            # An untrained composer (uniform) and a policy of its own weigh nothing.
            untrained = method in FROM_SCRATCH or method == "uniform"
            objectives = [None] if untrained else list(search.composer_objectives)
            composer_data = [None] if untrained else data_choices
            for rank, episodes, alpha, objective, data, seed in itertools.product(
                    ranks, search.data_episodes, alphas, objectives, composer_data,
                    search.seeds):
                point = TrialPoint(target=target.label, task=task.name, method=method,
                                   rank=rank, episodes=episodes, alpha=alpha, seed=seed,
                                   objective=objective, composer_data=data)
                if point not in points:
                    points.append(point)
    return points


def start_order(points: list[TrialPoint]) -> list[TrialPoint]:
    """`points` in the order Tune starts them: every point whose new skill (scratch, bc,
    joint: its policy) no earlier point fits, in their order, then the points that share
    a skill an earlier one fits. Trials side by side then seldom need a skill that is still
    being fitted: such a trial waits for the other's fit (pipeline/fit_claims.py) and
    holds its slot meanwhile."""
    seen: set[str] = set()
    first: list[TrialPoint] = []
    later: list[TrialPoint] = []
    for point in points:
        (later if point.skill_tag() in seen else first).append(point)
        seen.add(point.skill_tag())
    return first + later


def rung_tag(tag: str, rung: int | None) -> str:
    """`tag`, with `r<i>` appended for a rung below the full budget."""
    return tag if rung is None else f"{tag}r{rung}"


def stream_name(search: SearchSpec, point: TrialPoint, rung: int | None = None) -> str:
    """Stream name of a trial's results rows: `<search>_<tag>` (`…r<i>` for early rungs)."""
    return f"{search.name}_{rung_tag(point.tag(), rung)}"


def skill_item(task: str, point: TrialPoint, rung: int | None = None) -> str:
    """Store name of a trial's new skill (scratch, bc, joint: its policy):
    `<task>_<skill tag>`."""
    return f"{task}_{rung_tag(point.skill_tag(), rung)}"


# ------------------------------------------------------------------ transformations


def _target(search: SearchSpec, stream: StreamSpec, label: str) -> tuple[TaskSpec, ComposerSpec]:
    return find_composer(stream, search.target(label).composer, "targets")


def variant_name(skill: str, variant: str) -> str:
    """Store name of a stored skill refitted as adapter variant `variant`."""
    return f"{skill}_{variant}"


def episodes_dataset(task: TaskSpec, episodes: int | None) -> str:
    """Store name of the target's dataset with `episodes` trajectories."""
    name = dataset_name(task)
    if episodes is None or episodes == task.data.episodes:
        return name
    return f"{name}_n{episodes}"


def _stored_data(task: TaskSpec, dataset: str) -> DataSpec:
    """Refer to the stored dataset `dataset` instead of generating or importing again."""
    limit = task.data.max_transitions if task.data.source == "store" else None
    return DataSpec(source="store", dataset=dataset, max_transitions=limit)


def _lora(task: TaskSpec, variant: str) -> dict:
    if variant == "full":
        return {**task.lora.model_dump(), "kind": "full"}
    return {**task.lora.model_dump(), "kind": "lora", "rank": int(variant[len("lora"):])}


def library_skill_task(stream: StreamSpec, skill: str, variant: str) -> TaskSpec:
    """A stored skill refitted as `variant`: renamed, no composers, its stored data."""
    task = stream.task(skill)
    data = dump(task)
    data.update(name=variant_name(skill, variant), lora=_lora(task, variant), composers=[],
                data=_stored_data(task, dataset_name(task)).model_dump(exclude_none=True))
    return parse_task(data)


def scaled_steps(steps: int, fraction: float) -> int:
    return max(1, math.ceil(steps * fraction))


def trial_task(search: SearchSpec, stream: StreamSpec, point: TrialPoint,
               fraction: float = 1.0, rung: int | None = None) -> TaskSpec:
    """The one task a trial fits: see the module docstring. `fraction` scales its steps
    (ASHA rungs); `rung` tags the names of a rung below the full budget."""
    task, composer = _target(search, stream, point.target)
    tag = rung_tag(point.tag(), rung)
    data = dump(task)
    steps = task.train.steps
    if search.steps_per_episode is not None:
        steps = search.steps_per_episode * (point.episodes or task.data.episodes or 1)
    train = {**data["train"], "steps": scaled_steps(steps, fraction)}
    stored = _stored_data(task, episodes_dataset(task, point.episodes))
    data.update(name=skill_item(task.name, point, rung), train=train,
                data=stored.model_dump(exclude_none=True))
    if point.method in FROM_SCRATCH:
        data.update(role="base", base=None, composers=[], lora=task.lora.model_dump())
        if point.method in SUBSET_METHODS and not composer.data.selects_all:
            # What the composer trains on, e.g. DSRL's safe near-expert subset (BC-Safe).
            data.update(data={"source": "store",
                              "dataset": subset_dataset(task, point.episodes, composer)})
        if point.method == "bc":
            data.update(objective="bc")
        elif point.method == "fisor":
            data.update(objective="reward+feasibility")
        elif point.method == "joint":
            # Pretraining on everything: the base's budget, on the union of both datasets.
            base_train = stream.task(task.base).train
            data.update(train={**base_train.model_dump(),
                               "steps": scaled_steps(base_train.steps, fraction)},
                        data={"source": "store",
                              "dataset": joint_dataset(task, point.episodes)})
        return parse_task(data)
    variant = point.variant
    assert variant is not None and point.alpha is not None
    skills = [s if s == BASE else variant_name(s, variant) for s in composer.skills]
    steps = 0 if point.method == "uniform" else scaled_steps(composer.steps, fraction)
    data.update(lora=_lora(task, variant), composers=[{
        "name": f"{composer.name}_{tag}", "skills": skills, "mode": MODE[point.method],
        "alpha": point.alpha.model_dump(), "steps": steps,
        "data": (ComposerData() if point.composer_data == "all" else composer.data).model_dump(),
        "objective": point.objective or composer.objective,
        "bank": "random" if point.method == "random" else "stored"}])
    return parse_task(data)


def library_tasks(search: SearchSpec, stream: StreamSpec,
                  points: list[TrialPoint]) -> list[TaskSpec]:
    """Every stored-skill variant the points compose, in stream order, each once."""
    wanted: set[tuple[str, str]] = set()
    for point in points:
        if point.variant is None:
            continue
        _, composer = _target(search, stream, point.target)
        wanted.update((skill, point.variant) for skill in composer.skills if skill != BASE)
    order = {task.name: index for index, task in enumerate(stream.tasks)}
    return [library_skill_task(stream, skill, variant)
            for skill, variant in sorted(wanted, key=lambda sv: (order[sv[0]], sv[1]))]


SUBSET_METHODS = ("scratch", "bc")
"""Methods that fit a new policy on the target's data alone: when the target's composer
trains on a subset (`ComposerSpec.data`), they train on that same subset."""


def subset_dataset(task: TaskSpec, episodes: int | None, composer: ComposerSpec) -> str:
    """Store name of the part of the target's data (at `episodes`) its composer trains on:
    `<dataset>-sub<6 hex of the selection>`."""
    selection = _digest(composer.data.model_dump(mode="json"))[:6]
    return f"{episodes_dataset(task, episodes)}-sub{selection}"


def subset_datasets(search: SearchSpec, stream: StreamSpec, points: list[TrialPoint]
                    ) -> dict[str, tuple[str, ComposerData, str, int | None]]:
    """Subset dataset name -> (the target's dataset, the composer's selection, the
    composer's name, the target's max_transitions when it is cut at load time) for every
    scratch/bc point whose composer trains on a subset. Made once the target's dataset
    exists (`tune.search.prepare`)."""
    subsets: dict[str, tuple[str, ComposerData, str, int | None]] = {}
    for point in points:
        task, composer = _target(search, stream, point.target)
        if point.method not in SUBSET_METHODS or composer.data.selects_all:
            continue
        limit = task.data.max_transitions if task.data.source == "store" else None
        subsets[subset_dataset(task, point.episodes, composer)] = (
            episodes_dataset(task, point.episodes), composer.data, composer.name, limit)
    return subsets


def joint_dataset(task: TaskSpec, episodes: int | None) -> str:
    """Store name of the union of the target's data (at `episodes`) and its base's."""
    return f"{episodes_dataset(task, episodes)}-joint"


def joint_datasets(search: SearchSpec, stream: StreamSpec,
                   points: list[TrialPoint]) -> dict[str, tuple[str, str, int | None]]:
    """Joint dataset name -> (base's dataset, target's dataset, the target's
    max_transitions when it is cut at load time, i.e. a stored source) for every joint
    point. The union is made once the base's dataset exists (`tune.search.prepare`)."""
    unions: dict[str, tuple[str, str, int | None]] = {}
    for point in points:
        if point.method != "joint":
            continue
        task, _ = _target(search, stream, point.target)
        limit = task.data.max_transitions if task.data.source == "store" else None
        unions[joint_dataset(task, point.episodes)] = (
            dataset_name(stream.task(task.base)), episodes_dataset(task, point.episodes), limit)
    return unions


def base_tasks(search: SearchSpec, stream: StreamSpec, points: list[TrialPoint]) -> list[TaskSpec]:
    """The stream's base tasks the targets are built on, in stream order."""
    bases = {_target(search, stream, p.target)[0].base for p in points}
    return [task for task in stream.tasks if task.role == "base" and task.name in bases]


def target_datasets(search: SearchSpec, stream: StreamSpec,
                    points: list[TrialPoint]) -> dict[str, TaskSpec]:
    """Dataset name -> the generating task that makes it, for every target data size and
    every stored skill the points compose (their datasets are referred to, not copied)."""
    datasets: dict[str, TaskSpec] = {}
    for point in points:
        task, composer = _target(search, stream, point.target)
        name = episodes_dataset(task, point.episodes)
        if name not in datasets and task.data.source == "generate":
            data = dump(task)
            if point.episodes is not None:
                data["data"]["episodes"] = point.episodes
            data["composers"] = []
            datasets[name] = parse_task(data)
        for skill in composer.skills:
            if skill == BASE:
                continue
            source = stream.task(skill)
            if source.data.source == "generate":
                datasets.setdefault(dataset_name(source), source.model_copy(
                    update={"composers": []}))
    return datasets
