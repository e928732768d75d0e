"""Task and stream specs: the one typed road from a YAML file to what the pipeline runs.

A *task* says which environment, which data, and what to fit (a base policy, or a LoRA
skill on a base plus composers that blend stored skills with it). A *stream* is an
ordered list of tasks plus named *scales* (at least `smoke` and `paper`) that override
step and episode counts, so one file serves a two-minute test and the paper's runs. A
task's sections (data, network, lora, composers, critic, train, eval) are in
tasks/spec_sections.py.

Everything is validated on load. Every failure is a `library.errors.SpecError` whose
message starts with the path of the bad field, e.g. `tasks[1].lora.rank: must be >= 1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    NonNegativeInt,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from library.errors import PsecError, SpecError
from library.names import BASE
from tasks.spec_sections import (
    CRITIC_OBJECTIVES,
    AlphaSpec,
    ComposerSpec,
    CriticSpec,
    DataSpec,
    Dynamics,
    EvalSpec,
    FieldError,
    LoraSpec,
    NetworkSpec,
    Objective,
    SpecModel,
    StoreName,
    TrainSpec,
    from_psec,
)
from tasks.suites import SUITES, get_suite

REQUIRED_SCALES = ("smoke", "paper")

class TaskSpec(SpecModel):
    """One task of a stream: its env, its data, and what to fit on it."""

    name: StoreName = Field(
        description="Store name of what this task fits (base or skill; a composer task "
        "stores only its composers) and of its dataset and result rows."
    )
    suite: str = Field(description=f"Benchmark suite: one of {', '.join(SUITES)}.")
    env: str = Field(description="Env name inside the suite, e.g. walker-walk or hammer-v3.")
    dynamics: Dynamics = Field(default_factory=Dynamics, description="Physics overrides.")
    data: DataSpec = Field(description="Where the offline dataset comes from.")
    role: Literal["base", "skill", "composer"] = Field(
        "skill",
        description="base: train a diffusion policy; skill: a LoRA on a frozen base (plus "
        "composers); composer: no skill of its own, only composers of stored skills.",
    )
    base: StoreName | None = Field(
        None,
        description="skill, composer: name of its base task (default: the stream's latest base).",
    )
    objective: Objective = Field("bc", description="Sample weighting of the diffusion loss.")
    critic: CriticSpec = Field(
        default_factory=CriticSpec, description="Critics for advantage/feasibility objectives."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="The new skill's adapter.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Fitting of base or skill.")
    composers: list[ComposerSpec] = Field(
        default_factory=list,
        description="skill: composers of stored skills + this skill; composer: composers of "
        "stored skills only (at least one).",
    )
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Evaluation settings.")
    network: NetworkSpec = Field(
        default_factory=NetworkSpec,
        description="The noise predictor's shape (base tasks only: skills and composers "
        "share their base's).",
    )
    horizon: int | None = Field(
        None, ge=1, description="Episode length (default: the suite's default for the env)."
    )
    init: StoreName | None = Field(
        None,
        description="base: start from this stored base's weights and normaliser instead of "
        "random ones, and train all of them on this task's data (fine-tuning; e.g. the "
        "CW10 baseline that forgets, configs/cw10_finetune.yaml). Its network is that base's.",
    )
    shipped: str | None = Field(
        None,
        description="base: a folder written by `psec base train` (e.g. bases/walker-stand, "
        "relative to the working directory); the base is taken from it instead of fitted, "
        "with the training it had there. A scale with fit_shipped fits it instead.",
    )

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, value: str) -> str:
        if value not in SUITES:
            raise ValueError(f"unknown suite {value!r}; known: {', '.join(SUITES)}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        suite = get_suite(self.suite)
        try:
            suite.check_env(self.env)
        except PsecError as error:
            raise from_psec(error, "env") from None
        for index, env in enumerate(self.data.envs or ()):
            try:
                suite.check_env(env)
            except PsecError as error:
                raise from_psec(error, f"data.envs.{index}") from None
        try:
            suite.check_dynamics(self.dynamics)
        except PsecError as error:
            raise from_psec(error) from None
        for index, env in enumerate(self.eval.envs or ()):
            try:
                suite.check_env(env)
            except PsecError as error:
                raise from_psec(error, f"eval.envs.{index}") from None
        if self.role != "base" and self.network != NetworkSpec():
            raise FieldError("network", "only a base task sets the network; its skills and "
                                        "composers share it")
        if self.role == "base":
            if self.base is not None:
                raise FieldError("base", "a base task has no base of its own")
            if self.composers:
                raise FieldError("composers", "only skill and composer tasks have composers")
            if self.init is not None and self.shipped is not None:
                raise FieldError("init", "a shipped base is taken, not trained: drop init")
            if self.init is not None and self.network != NetworkSpec():
                raise FieldError("network", f"a base initialised from {self.init!r} has that "
                                            "base's network; remove it")
        elif self.shipped is not None:
            raise FieldError("shipped", "only a base task can be shipped")
        elif self.init is not None:
            raise FieldError("init", "only a base task starts from another base's weights "
                                     "(a skill or composer builds on its `base`)")
        if self.role == "composer":
            self._check_composer_role()
        if self.eval.controls and not self.composers:
            raise FieldError(("eval", "controls"), "controls are the skills a composer "
                                                   "composes, and this task has no composer")
        names = [self.name]
        for index, composer in enumerate(self.composers):
            if composer.name in names:
                raise FieldError(("composers", index, "name"), f"{composer.name!r} is used twice")
            if self.role == "skill" and self.name in composer.skills:
                raise FieldError(
                    ("composers", index, "skills"),
                    f"{self.name!r} is this task's own skill, always composed last; do not list it",
                )
            names.append(composer.name)
        return self

    def _check_composer_role(self) -> None:
        """A composer task fits nothing but its composers, so it has no use for a skill's
        adapter and nowhere to store critics (they live in a task's base or skill item)."""
        if not self.composers:
            raise FieldError("composers", "a composer task needs at least one composer")
        if self.needs_critic:
            field: str | tuple = "objective"
            objective = self.objective
            if objective not in CRITIC_OBJECTIVES:
                index, objective = next((i, c.objective) for i, c in enumerate(self.composers)
                                        if c.objective in CRITIC_OBJECTIVES)
                field = ("composers", index, "objective")
            raise FieldError(
                field,
                f"{objective!r} needs critics, which a composer task has no item to "
                "store in; use 'bc'",
            )
        if self.lora != LoraSpec():
            raise FieldError("lora", "a composer task fits no skill of its own; remove it")
        for composer in self.composers:
            # No new skill to start from or to pull toward: α starts uniform, unregularised,
            # unless the spec says otherwise.
            if "alpha" not in composer.model_fields_set:
                composer.alpha = AlphaSpec(init="uniform", reg=0.0)

    @property
    def objectives(self) -> set[str]:
        """The sample weightings this task trains with: its own and its composers'."""
        return {self.objective, *(c.objective for c in self.composers if c.objective)}

    @property
    def needs_critic(self) -> bool:
        """Whether an objective of the task or of one of its composers needs critics trained
        on the task's data (a bc skill's composer may weigh by advantage: the critics are
        then fitted first and stored in the skill's item)."""
        return bool(self.objectives & set(CRITIC_OBJECTIVES))

    def composer_objective(self, composer: ComposerSpec) -> str:
        """The weighting `composer` trains by: its own objective where it names one, else
        the task's."""
        return composer.objective or self.objective

    def composer_skills(self, composer: ComposerSpec) -> list[str]:
        """The full ordered skill list of `composer`: its stored skills, then this task's
        (a composer task has none of its own: just the stored skills)."""
        if self.role == "composer":
            return list(composer.skills)
        return [*composer.skills, self.name]

    @property
    def eval_envs(self) -> list[str]:
        """Envs the task's items are rolled out in: `eval.envs`, else the task's env."""
        return list(self.eval.envs or [self.env])

    def control_items(self) -> list[str]:
        """Store names rolled out alone on this task as its `single` controls (none without
        them): every item its composers compose except its own skill, the base as its name,
        in first-listed order."""
        if "single" not in self.eval.controls:
            return []
        items: list[str] = []
        for composer in self.composers:
            for skill in composer.skills:
                item = self.base if skill == BASE else skill
                if item is not None and item not in items:
                    items.append(item)
        return items

    def stored_names(self) -> list[str]:
        """Every store name this task produces: its policy/skill (none for a composer task),
        then its composers."""
        own = [] if self.role == "composer" else [self.name]
        return [*own, *(composer.name for composer in self.composers)]


class Scale(SpecModel):
    """Named overrides of a stream's sizes (unset fields leave the tasks' values alone)."""

    train_steps: int | None = Field(None, ge=1, description="train.steps of every skill task.")
    base_steps: int | None = Field(None, ge=1, description="train.steps of every base task.")
    composer_steps: int | None = Field(None, ge=1, description="steps of every composer.")
    critic_steps: int | None = Field(None, ge=1, description="critic.steps of every task.")
    batch_size: int | None = Field(None, ge=1, description="train.batch_size of every task.")
    data_episodes: int | dict[str, int] | None = Field(
        None,
        description="data.episodes of every generating task, or per task name ({name: n}).",
    )
    data_transitions: int | dict[str, int] | None = Field(
        None,
        description="data.max_transitions (keep the first N transitions) of every task, or "
        "per task name ({name: n}): sizes data in transitions where episode lengths vary.",
    )
    eval_episodes: int | None = Field(None, ge=1, description="eval.episodes of every task.")
    eval_seeds: list[NonNegativeInt] | None = Field(
        None, min_length=1, description="eval.seeds of every task."
    )
    max_steps: int | None = Field(None, ge=1, description="eval.max_steps of every task.")
    eval_candidates: int | None = Field(
        None, ge=1, description="eval.n_candidates of every task: candidate actions per state, "
        "the one its task's critic ranks best kept (a task without critics samples one).",
    )
    curve_points: int | None = Field(
        None, ge=0, le=100, description="eval.curve_points of every task that asks for a "
        "learning curve (0: none).",
    )
    fit_shipped: bool = Field(
        False, description="Fit every base task, also those that name a `shipped` folder "
        "(e.g. smoke: tests fit a small base in seconds rather than take hours of training).",
    )
    eval_envs: int | None = Field(
        None, ge=1, description="Keep the first N of eval.envs of every task that lists them."
    )
    data_envs: int | None = Field(
        None, ge=1, description="Keep the first N of data.envs of every task that lists "
        "them (a multi-task base's data), e.g. a few of them for a smoke run.",
    )
    tasks: list[str] | None = Field(
        None,
        min_length=1,
        description="Keep only these tasks (stream order is kept), e.g. a few tasks of a long "
        "stream for a smoke run. A kept task's base and the task making a dataset it reuses "
        "must be kept; its composers compose only the kept ones of their stored skills, at "
        "least one each.",
    )

    @field_validator("tasks")
    @classmethod
    def _distinct_tasks(cls, tasks: list[str] | None) -> list[str] | None:
        for index, name in enumerate(tasks or ()):
            if name in tasks[:index]:
                raise FieldError((index,), f"{name!r} is listed twice")
        return tasks

    @field_validator("data_episodes", "data_transitions", mode="before")
    @classmethod
    def _per_task_counts(cls, value: Any) -> Any:
        def positive(number: Any) -> bool:
            return isinstance(number, int) and not isinstance(number, bool) and number >= 1

        if value is None or positive(value):
            return value
        if isinstance(value, dict):
            for key, number in value.items():
                if not isinstance(key, str) or not positive(number):
                    raise FieldError(
                        (str(key),), f"must map a task name to an integer >= 1, got {number!r}"
                    )
            return value
        raise ValueError(f"must be an integer >= 1 or a mapping task -> integer, got {value!r}")

    def episodes_for(self, task: str) -> int | None:
        """The data_episodes override for `task`, or None."""
        if isinstance(self.data_episodes, dict):
            return self.data_episodes.get(task)
        return self.data_episodes

    def transitions_for(self, task: str) -> int | None:
        """The data_transitions override for `task`, or None."""
        if isinstance(self.data_transitions, dict):
            return self.data_transitions.get(task)
        return self.data_transitions


class StreamSpec(SpecModel):
    """An ordered list of tasks run one after another, with named scales."""

    name: StoreName = Field(description="Stream name (store-safe); prefixes run names.")
    continual: StrictBool = Field(
        True, description="Re-evaluate every earlier task after each new one (forgetting)."
    )
    seed: int = Field(
        0, ge=0, description="Root seed; per-task and per-worker seeds derive from it."
    )
    tasks: list[TaskSpec] = Field(min_length=1, description="Tasks in order.")
    scales: dict[str, Scale] = Field(description="Named scales; must define smoke and paper.")
    paper: dict[StoreName, str] = Field(
        default_factory=dict,
        description="The paper's figure for items of the stream, printed beside ours by "
        "`psec run` (e.g. `s2w: 688 (Table 2, PSEC S→W)`).",
    )
    applied_scale: str | None = Field(
        None, description="Set by at_scale(): the scale already applied (None = as written)."
    )

    @field_validator("scales")
    @classmethod
    def _required_scales(cls, scales: dict[str, Scale]) -> dict[str, Scale]:
        missing = [name for name in REQUIRED_SCALES if name not in scales]
        if missing:
            raise ValueError(f"must define {' and '.join(missing)} (defined: {', '.join(scales)})")
        return scales

    @model_validator(mode="after")
    def _stream_checks(self) -> StreamSpec:
        produced: dict[str, int] = {}  # task or store name -> index of the task producing it
        datasets: dict[str, int] = {}  # dataset made in the stream -> index of its task
        needs: dict[str, dict[str, str]] = {}  # task -> {task it needs: what for}
        latest_base: str | None = None
        for index, task in enumerate(self.tasks):
            here = ("tasks", index)
            task_needs = needs.setdefault(task.name, {})
            # A composer task stores nothing under its name, but the name still names its
            # dataset and its result rows, so it is as unique as any stored name.
            fields = [("name",)] + [("composers", c, "name") for c in range(len(task.composers))]
            names = [task.name, *(composer.name for composer in task.composers)]
            for name, field in zip(names, fields):
                if name in produced:
                    raise FieldError(
                        (*here, *field), f"{name!r} is already produced by tasks[{produced[name]}]"
                    )
            if task.role != "base":
                if task.base is None:
                    if latest_base is None:
                        raise FieldError((*here, "base"), "no earlier base task in the stream")
                    task.base = latest_base
                else:
                    earlier = produced.get(task.base)
                    if earlier is None or self.tasks[earlier].role != "base":
                        raise FieldError(
                            (*here, "base"), f"{task.base!r} is not an earlier base task"
                        )
                task_needs.setdefault(task.base, "its base")
            self._check_composed_skills(index, task, produced)
            if task.data.source == "store":
                if task.data.dataset in datasets:
                    task_needs.setdefault(self.tasks[datasets[task.data.dataset]].name,
                                          "its dataset")
            else:
                datasets[task.name] = index
            for name in names:
                produced[name] = index
            if task.role == "base":
                latest_base = task.name
        if self.applied_scale is None:
            # A scaled copy was checked against the whole stream before it was cut.
            self._scale_checks(needs)
            for name in self.paper:
                if name not in produced:
                    raise FieldError(("paper", name), "not an item of the stream")
        return self

    def _check_composed_skills(self, index: int, task: TaskSpec,
                               produced: dict[str, int]) -> None:
        """Every stored skill a composer of tasks[index] lists is an earlier skill task's,
        on the same base. (Not a need of the task: a scale may drop some of them.)"""
        for c_index, composer in enumerate(task.composers):
            for s_index, skill in enumerate(composer.skills):
                if skill == BASE:
                    continue
                where = ("tasks", index, "composers", c_index, "skills", s_index)
                earlier = produced.get(skill)
                if earlier is None or self.tasks[earlier].name != skill:
                    raise FieldError(where, f"{skill!r} is not an earlier skill task")
                source = self.tasks[earlier]
                if source.role == "base":
                    raise FieldError(where, f"{skill!r} is a base, not a skill; use 'base'")
                if source.role == "composer":
                    raise FieldError(where, f"{skill!r} is a composer task: it stores no skill")
                if source.base != task.base:
                    raise FieldError(
                        where,
                        f"{skill!r} sits on base {source.base!r}, this task on {task.base!r}",
                    )

    def _scale_checks(self, needs: dict[str, dict[str, str]]) -> None:
        names = {task.name: task for task in self.tasks}
        stored_skills = {  # composer -> the stored skills it lists ('base' is always there)
            composer.name: [skill for skill in composer.skills if skill != BASE]
            for task in self.tasks for composer in task.composers}
        for scale_name, scale in self.scales.items():
            if isinstance(scale.data_episodes, dict):
                for task_name in scale.data_episodes:
                    field = ("scales", scale_name, "data_episodes", task_name)
                    if task_name not in names:
                        raise FieldError(field, f"no task named {task_name!r}")
                    if names[task_name].data.source != "generate":
                        raise FieldError(field, f"task {task_name!r} does not generate its data")
            if isinstance(scale.data_transitions, dict):
                for task_name in scale.data_transitions:
                    if task_name not in names:
                        raise FieldError(("scales", scale_name, "data_transitions", task_name),
                                         f"no task named {task_name!r}")
            kept = scale.tasks or ()
            for index, task_name in enumerate(kept):
                field = ("scales", scale_name, "tasks", index)
                if task_name not in names:
                    raise FieldError(field, f"no task named {task_name!r}")
                for needed, why in needs[task_name].items():
                    if needed not in kept:
                        raise FieldError(
                            field, f"{task_name!r} needs {needed!r} ({why}), which is not kept"
                        )
                for composer in names[task_name].composers:
                    skills = stored_skills[composer.name]
                    if skills and not any(skill in kept for skill in skills):
                        raise FieldError(
                            field,
                            f"composer {composer.name!r} of {task_name!r} needs at least one "
                            f"of its skills ({', '.join(skills)}) kept",
                        )

    def task(self, name: str) -> TaskSpec:
        """The task called `name` (SpecError on field `tasks` if there is none)."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise SpecError("tasks", f"no task named {name!r} in stream {self.name!r}")

    def at_scale(self, name: str) -> StreamSpec:
        """A validated copy with scale `name` applied; SpecError listing the defined scales."""
        if name not in self.scales:
            raise SpecError("scale", f"unknown scale {name!r}; defined: {', '.join(self.scales)}")
        scale = self.scales[name]
        data = self.model_dump(mode="json")
        if scale.tasks is not None:
            data["tasks"] = [task for task in data["tasks"] if task["name"] in scale.tasks]
            for task in data["tasks"]:
                for composer in task["composers"]:
                    composer["skills"] = [skill for skill in composer["skills"]
                                          if skill == BASE or skill in scale.tasks]
        for task in data["tasks"]:
            steps = scale.base_steps if task["role"] == "base" else scale.train_steps
            if scale.fit_shipped:
                task["shipped"] = None
            _set(task["train"], "steps", steps)
            _set(task["train"], "batch_size", scale.batch_size)
            _set(task["critic"], "steps", scale.critic_steps)
            for composer in task["composers"]:
                if composer["steps"] != 0:  # an untrained composer stays untrained
                    _set(composer, "steps", scale.composer_steps)
            if task["data"]["source"] == "generate":
                _set(task["data"], "episodes", scale.episodes_for(task["name"]))
            _set(task["data"], "max_transitions", scale.transitions_for(task["name"]))
            _set(task["eval"], "episodes", scale.eval_episodes)
            _set(task["eval"], "seeds", scale.eval_seeds)
            _set(task["eval"], "max_steps", scale.max_steps)
            _set(task["eval"], "n_candidates", scale.eval_candidates)
            if task["eval"].get("curve_points"):
                _set(task["eval"], "curve_points", scale.curve_points)
            if task["eval"]["envs"] is not None and scale.eval_envs is not None:
                task["eval"]["envs"] = task["eval"]["envs"][: scale.eval_envs]
            if task["data"].get("envs") is not None and scale.data_envs is not None:
                task["data"]["envs"] = task["data"]["envs"][: scale.data_envs]
        data["applied_scale"] = name
        return parse_stream(data)


def _set(target: dict[str, Any], key: str, value: Any) -> None:
    if value is not None:
        target[key] = value


def _field_path(loc: Sequence[str | int]) -> str:
    """('tasks', 1, 'lora', 'rank') -> 'tasks[1].lora.rank'."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part:
            path += f".{part}" if path else str(part)
    return path or "<root>"


_MESSAGES = {
    "missing": "required field is missing",
    "extra_forbidden": "unknown field",
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "literal_error": "must be one of {expected}",
    "too_short": "must have at least {min_length} item(s)",
}


def spec_error(error: ValidationError) -> SpecError:
    """One SpecError (one line) from pydantic's list of errors: the first, plus a count."""
    errors = error.errors()
    first = errors[0]
    loc = list(first["loc"])
    ctx = first.get("ctx") or {}
    cause = ctx.get("error")
    if isinstance(cause, FieldError):
        loc += list(cause.field)
        message = cause.message
    elif first["type"] in _MESSAGES:
        message = _MESSAGES[first["type"]].format(**ctx)
        if first["type"] not in ("missing", "extra_forbidden"):
            message += f", got {first['input']!r}"
    elif isinstance(cause, Exception):
        message = str(cause)
    else:
        message = f"{first['msg'][:1].lower()}{first['msg'][1:]}, got {first['input']!r}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return SpecError(_field_path(loc), message)


def parse_task(data: Any) -> TaskSpec:
    """Validate a task spec given as plain data (e.g. YAML or JSON already parsed)."""
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as error:
        raise spec_error(error) from None


def parse_stream(data: Any) -> StreamSpec:
    """Validate a stream given as plain data."""
    try:
        return StreamSpec.model_validate(data)
    except ValidationError as error:
        raise spec_error(error) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; SpecError naming the file if missing or malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(str(path), "no such file") from None
    except UnicodeDecodeError as error:
        raise SpecError(str(path), f"not a UTF-8 text file (byte {error.start}: "
                                   f"{error.reason})") from None
    except OSError as error:
        raise SpecError(str(path), f"cannot read: {error.strerror or error}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise SpecError(str(path), f"invalid YAML at {where}{problem}") from None
    if not isinstance(data, dict):
        raise SpecError(str(path), f"must hold a mapping, got {type(data).__name__}")
    return data


def load_stream(path: str | Path, scale: str | None = None) -> StreamSpec:
    """Load and validate a stream file; apply `scale` (e.g. "smoke") when given."""
    data = read_yaml(path)
    if "tasks" not in data and "suite" in data:  # else: "tasks: missing (and 9 more errors)"
        raise SpecError(str(path), "holds one task spec (it has `suite`, no `tasks`): a stream "
                                   "lists its tasks under `tasks:`; `psec submit` takes one task")
    stream = parse_stream(data)
    return stream if scale is None else stream.at_scale(scale)


def load_task(path: str | Path) -> TaskSpec:
    """Load and validate a single task spec file (what `psec submit` sends)."""
    data = read_yaml(path)
    if "tasks" in data and "suite" not in data:
        raise SpecError(str(path), "holds a stream (it has `tasks`, no `suite`): give one task "
                                   "spec, such as one entry of its `tasks:` list")
    return parse_task(data)


def dump(spec: BaseModel) -> dict[str, Any]:
    """Plain JSON-safe data that `parse_task` / `parse_stream` turn back into `spec`."""
    return spec.model_dump(mode="json")


def dump_yaml(spec: BaseModel) -> str:
    """`dump(spec)` as YAML text, keys in field order."""
    return yaml.safe_dump(dump(spec), sort_keys=False)
