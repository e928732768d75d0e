"""Search files: the one typed road from `configs/search_*.yaml` to a Ray Tune search.

A search names a stream file and the *targets* in it — composers of the stream, each one
transfer setting such as S+W→R (compose the base and the walk skill with a new run skill)
— and the axes to sweep: methods, LoRA ranks, seeds, trajectory counts of the target's
data, α(s) parameterisations and the start points of the fixed-weight baseline. Named
scales (at least `smoke` and `paper`) pick the stream's scale and may narrow the axes, so
one file serves a two-minute check and the paper's runs.

Everything is validated on load; every failure is a `library.errors.SpecError` naming the
field, e.g. `targets[1].composer: no composer 'sw2x' in stream 'dmc_walker'`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from library.errors import PsecError, SpecError
from library.names import check_name
from tasks.spec import (
    AlphaSpec,
    ComposerSpec,
    FieldError,
    StreamSpec,
    TaskSpec,
    load_stream,
    read_yaml,
    spec_error,
)
from tasks.spec_sections import FEASIBILITY_OBJECTIVES, Objective

Method = Literal["psec", "nsec", "asec", "mlp", "scratch", "fixed", "uniform", "random",
                 "bc", "joint", "fisor"]
"""psec/nsec/asec: composer at the parameter/noise/action level; mlp: PSEC with full-rank
adapters for every skill; scratch: a diffusion policy fitted on the target's data alone
with the target's objective (with `advantage`: IQL with a diffusion actor); bc: the same
with the plain diffusion loss (w = 1); joint: a diffusion policy fitted, with the target's
objective, on the union of the target's data and its base's pretraining data (dynamics
shift: source + target); fisor: a diffusion policy fitted on the target's whole data
with FISOR's weighting (`reward+feasibility`: IQL reward critics and the HJ feasibility
critic fitted first; a target whose task weighs by feasibility, i.e. has costs); fixed: one learned constant α for all states (w/o context
awareness); uniform: the uniform-α control (a fixed composer α = 1/k registered
untrained: `steps: 0`); random:
the random-LoRA bank control (psec over random LoRAs of the stored skills' per-layer
norms, `bank: random`, at each of the search's α choices)."""

ComposerDataChoice = Literal["stream", "all"]
"""What a target's composers train on (`SearchSpec.composer_data`)."""

COMPOSING = ("psec", "nsec", "asec", "mlp", "fixed", "uniform", "random")
FROM_SCRATCH = ("scratch", "bc", "joint", "fisor")
"""Methods that fit a new policy (a base) instead of a skill on the stored base."""
MODE = {"psec": "parameter", "nsec": "noise", "asec": "action", "mlp": "parameter",
        "fixed": "fixed", "uniform": "fixed", "random": "parameter"}
"""Composer mode of each composing method."""

METRICS = ("score", "return_mean", "success", "cost")
"""Columns of the store's results table a search may optimise."""

MAX_SEARCH_NAME = 40
"""Trial streams are named `<search>_<8-hex tag>` and must stay store names (≤ 64)."""


class _Spec(BaseModel):
    """Unknown keys are errors; defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True,
                              use_attribute_docstrings=True)


class TargetSpec(_Spec):
    """One transfer setting: a composer of the stream, a column of the tables."""

    label: str = Field(min_length=1)
    """Column name in tables and plots, e.g. `S+W→R`."""
    composer: str
    """Name of a composer in the stream. Its task is the new task (whose skill is fitted
    and composed last) and its `skills` are the stored skills it composes."""
    methods: list[Method] | None = None
    """The search's methods to run on this target (default: all of them), e.g. baselines
    that do not depend on the target's base only once per dataset."""


class SearcherSpec(_Spec):
    """How Ray Tune walks the trial points."""

    kind: Literal["grid", "random"] = "grid"
    """grid: every trial point once; random: `num_samples` points drawn uniformly."""
    num_samples: int = Field(1, ge=1)
    """random: trials to draw (repeats of one point reuse its stored items)."""
    scheduler: Literal["fifo", "asha"] = "fifo"
    """fifo: every trial runs to the end; asha: trials report after each rung and the
    worst are stopped early (ray.tune.schedulers.ASHAScheduler)."""
    rungs: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    """Fractions of the target's training steps at which a trial reports (asha); the last
    must be 1.0. Each rung fits afresh with that many steps (items tagged `r<i>`)."""
    reduction_factor: float = Field(3.0, gt=1)
    """asha: keep the best 1/reduction_factor of the trials at each rung."""

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, rungs: list[float]) -> list[float]:
        for index, value in enumerate(rungs):
            if not 0 < value <= 1:
                raise FieldError((index,), f"must be in (0, 1], got {value!r}")
            if index and value <= rungs[index - 1]:
                raise FieldError((index,), "rungs must increase")
        if rungs[-1] != 1.0:
            raise ValueError(f"the last rung must be 1.0 (the full budget), got {rungs[-1]}")
        return rungs

    @model_validator(mode="after")
    def _scheduler(self) -> SearcherSpec:
        if self.scheduler == "fifo" and len(self.rungs) > 1:
            raise FieldError("rungs", "several rungs need scheduler 'asha'")
        return self


class ResourcesSpec(_Spec):
    """What a trial reserves. A trial is a driver: its fits and rollouts are Ray tasks
    that reserve their own CPUs, so the trial itself reserves memory only and never holds
    a CPU its own fits wait for (which on 2 CPUs would deadlock)."""

    max_concurrent_trials: int | Literal["auto"] = "auto"
    """Trials running at once; auto = the cluster's CPUs (every trial's fit needs ≥ 1)."""
    trial_memory_mb: int = Field(256, ge=1)
    """Memory reserved by a trial's driver process (Ray's `memory` resource)."""

    @field_validator("max_concurrent_trials", mode="before")
    @classmethod
    def _concurrency(cls, value: Any) -> Any:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)
                               and value >= 1):
            return value
        raise ValueError(f"must be an integer >= 1 or 'auto', got {value!r}")


class SearchScale(_Spec):
    """Named overrides of a search (unset fields leave the search's values alone)."""

    stream_scale: str
    """Scale of the stream to run at (a scale the stream defines, e.g. smoke)."""
    targets: list[str] | None = Field(None, min_length=1)
    """Labels of the targets to keep (e.g. only those whose experts exist at smoke)."""
    methods: list[Method] | None = Field(None, min_length=1)
    """The search's methods to keep (e.g. not Joint, whose budget is the base's, at a
    scale that cannot afford it); a target left with none of its own is dropped."""
    seeds: list[int] | None = Field(None, min_length=1)
    """Training seeds."""
    ranks: list[int] | None = Field(None, min_length=1)
    """LoRA ranks."""
    data_episodes: list[int] | None = Field(None, min_length=1)
    """Trajectory counts of the target's data."""
    steps_per_episode: int | None = Field(None, ge=1)
    """The target skill's steps per trajectory of its data (overrides the search's)."""
    fixed_alpha: list[AlphaSpec] | None = Field(None, min_length=1)
    """Start points of the fixed-weight baseline (fewer at a small scale: each is a trial
    per target and seed)."""
    alpha: list[AlphaSpec] | None = Field(None, min_length=1)
    """α(s) parameterisations (e.g. only the default, for the controls of another search's
    table)."""
    composer_objectives: list[Objective | None] | None = Field(None, min_length=1)
    """Sample weightings of the target's composers to try."""
    composer_data: list[ComposerDataChoice] | None = Field(None, min_length=1)
    """What the target's composers train on (`SearchSpec.composer_data`)."""
    num_samples: int | None = Field(None, ge=1)
    """searcher.num_samples."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """resources.max_concurrent_trials."""


class AlphaTraceSpec(_Spec):
    """Which composer the α(s)-over-one-episode plot follows (paper Fig. 5)."""

    target: str
    """Label of a target."""
    method: Method = "psec"
    """A composing method."""
    seed: int = 0
    """Training seed of the trial."""
    alpha: AlphaSpec | None = None
    """Which of the search's α(s) choices (`alpha`) the composer was trained with; None:
    the first. A scale whose choices leave it out drops the trace."""
    objective: Objective | None = None
    """Which of the search's composer weightings (`composer_objectives`); None: the
    first. A scale whose choices leave it out drops the trace."""
    composer_data: ComposerDataChoice | None = None
    """Which of the search's `composer_data` choices; None: the first. A scale whose
    choices leave it out drops the trace."""


class SearchSpec(_Spec):
    """A Ray Tune search over methods × ranks × seeds × data sizes × α choices."""

    name: str
    """Search name (store-safe, ≤ 40 characters): the Tune experiment's name and the
    prefix of every trial's stream name in the results table."""
    stream: str
    """Stream file, relative to the search file's folder (or absolute)."""
    targets: list[TargetSpec] = Field(min_length=1)
    """Transfer settings to evaluate (table columns)."""
    methods: list[Method] = Field(min_length=1)
    """Methods (table rows)."""
    ranks: list[int] = Field(default_factory=lambda: [8], min_length=1)
    """LoRA rank of the target's new skill and of every stored skill it composes (the
    library is refitted at each rank). Ignored by mlp, scratch, bc and joint."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Training seeds: they seed the target's skill and composer (and scratch); the base
    and the stored skills are fitted once with the stream's seed and shared."""
    data_episodes: list[int | None] = Field(default_factory=lambda: [None], min_length=1)
    """Trajectories of the target task's data; null = the stream's count at the scale."""
    steps_per_episode: int | None = Field(None, ge=1)
    """When set, the target's new skill (and a from-scratch policy) trains this many steps
    per trajectory of its data instead of the stream's fixed budget: the paper's Fig. 6(a)
    trains 10 / 30 / 50 / 100 trajectories for 10K / 30K / 50K / 100K steps (1000).
    Composers keep their budget."""
    alpha: list[AlphaSpec] = Field(default_factory=lambda: [AlphaSpec()], min_length=1)
    """α(s) parameterisations of psec, nsec, asec, mlp and the random bank (output, scale,
    init, reg)."""
    fixed_alpha: list[AlphaSpec] = Field(default_factory=lambda: [AlphaSpec()], min_length=1)
    """Start points of the fixed-weight baseline's constant α (it is then trained); the
    tables report the best of them per target: the search tunes the fixed weights."""
    composer_objectives: list[Objective | None] = Field(default_factory=lambda: [None],
                                                        min_length=1)
    """Sample weightings of the target's composers to try (null: the stream's), e.g.
    [null, advantage]: the advantage-weighted composer loss, from IQL critics fitted on the
    target's data (its skill is then fitted again, into an item that holds them)."""
    composer_data: list[ComposerDataChoice] = Field(default_factory=lambda: ["stream"],
                                                    min_length=1)
    """What the target's composers train on: `stream`, the composer's own `data` rule
    (e.g. DSRL's safe near-expert subset); `all`, every episode of the target's data (a
    weighting that should see hazards needs the episodes that meet them). A target whose
    composer already trains on everything has one choice: `all` is `stream` there."""
    controls: list[Literal["single"]] = Field(default_factory=list)
    """single: roll every stored skill the target composes, and the base, out on the
    target task alone (stream `<search>_controls`). The new skill alone is evaluated in
    every trial anyway; uniform α and the random-LoRA bank are the methods `uniform` and
    `random`."""
    searcher: SearcherSpec = Field(default_factory=SearcherSpec)
    """Grid or random search, fifo or ASHA."""
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Per-trial reservation and concurrency."""
    metric: Literal["score", "return_mean", "success", "cost"] = "score"
    """Results-table column a trial reports (mean over evaluation seeds)."""
    mode: Literal["max", "min"] = "max"
    """Whether the metric is maximised or minimised."""
    alpha_trace: list[AlphaTraceSpec] = Field(default_factory=list)
    """The composers whose α(s) over one episode is plotted, one plot each (one mapping
    or a list of them in YAML; none by default)."""
    layout: Literal["methods", "dynamics_shift", "safe"] = "methods"
    """Table of the results section: methods (a row per method, a column per target),
    dynamics_shift (paper Table 8: a column per target dataset, a row per method and
    shift of the target's base; `tune.shift_table`) or safe (paper Table 1: a row per
    safety task, a column per method, normalised reward / cost; `tune.safe_table`)."""
    paper: dict[str, dict[str, str]] = Field(default_factory=dict)
    """Reference figures from the paper beside ours: {row label: {target label: text}}."""
    scales: dict[str, SearchScale]
    """Named scales; must define smoke and paper."""
    applied_scale: str | None = None
    """Set by `at_scale`: the scale already applied (None = as written)."""
    source: str | None = None
    """Set on load: the search file's path (relative paths resolve from its folder)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        try:
            check_name(value)
        except PsecError as error:
            raise ValueError(str(error)) from None
        if len(value) > MAX_SEARCH_NAME:
            raise ValueError(f"must have at most {MAX_SEARCH_NAME} characters, got {len(value)}")
        return value

    @field_validator("alpha_trace", mode="before")
    @classmethod
    def _traces(cls, value):
        """One mapping, a list of them, or nothing (null)."""
        if value is None:
            return []
        return [value] if isinstance(value, dict) else value

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, ranks: list[int]) -> list[int]:
        return _positive_unique(ranks)

    @field_validator("data_episodes")
    @classmethod
    def _episodes(cls, episodes: list[int | None]) -> list[int | None]:
        for index, value in enumerate(episodes):
            if value is not None and value < 1:
                raise FieldError((index,), f"must be >= 1 or null, got {value!r}")
            if value in episodes[:index]:
                raise FieldError((index,), f"{value!r} is listed twice")
        return episodes

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        for index, value in enumerate(seeds):
            if value < 0:
                raise FieldError((index,), f"must be >= 0, got {value}")
            if value in seeds[:index]:
                raise FieldError((index,), f"{value} is listed twice")
        return seeds

    @field_validator("methods", "composer_data")
    @classmethod
    def _distinct(cls, choices: list[str]) -> list[str]:
        for index, value in enumerate(choices):
            if value in choices[:index]:
                raise FieldError((index,), f"{value!r} is listed twice")
        return choices

    @field_validator("scales")
    @classmethod
    def _scales(cls, scales: dict[str, SearchScale]) -> dict[str, SearchScale]:
        missing = [name for name in ("smoke", "paper") if name not in scales]
        if missing:
            raise ValueError(f"must define {' and '.join(missing)} (defined: {', '.join(scales)})")
        return scales

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        labels = [target.label for target in self.targets]
        for index, label in enumerate(labels):
            if label in labels[:index]:
                raise FieldError(("targets", index, "label"), f"{label!r} is used twice")
        for index, target in enumerate(self.targets):
            for m_index, method in enumerate(target.methods or []):
                if method not in self.methods:
                    raise FieldError(("targets", index, "methods", m_index),
                                      f"{method!r} is not one of the search's methods")
        for scale_name, scale in self.scales.items():
            for index, label in enumerate(scale.targets or []):
                if label not in labels:
                    raise FieldError(("scales", scale_name, "targets", index),
                                      f"no target labelled {label!r}")
            for index, method in enumerate(scale.methods or []):
                if method not in self.methods:
                    raise FieldError(("scales", scale_name, "methods", index),
                                      f"{method!r} is not one of the search's methods")
            for field in ("ranks", "data_episodes"):
                values = getattr(scale, field)
                if values is not None and field == "ranks":
                    try:
                        _positive_unique(values)
                    except FieldError as error:
                        raise FieldError(("scales", scale_name, field, *error.field),
                                          error.message) from None
                if values is not None and field == "data_episodes" and min(values) < 1:
                    raise FieldError(("scales", scale_name, field), "must be >= 1")
        for index, trace in enumerate(self.alpha_trace):
            # One trace (the usual case) is named without an index, as it was written.
            where = ("alpha_trace",) if len(self.alpha_trace) == 1 else ("alpha_trace", index)
            if trace.target not in labels:
                raise FieldError((*where, "target"), f"no target labelled {trace.target!r}")
            if trace.method not in COMPOSING:
                raise FieldError((*where, "method"), f"{trace.method!r} composes nothing")
            if trace.alpha is not None and trace.alpha not in self.alpha:
                raise FieldError((*where, "alpha"), "is none of the search's alpha choices")
        return self

    # ---------------------------------------------------------------- scales

    def target(self, label: str) -> TargetSpec:
        """The target labelled `label` (labels are checked unique and every trace's and
        point's label is one of them)."""
        return next(t for t in self.targets if t.label == label)

    def target_methods(self, target: TargetSpec) -> list[str]:
        """The methods run on `target`: the search's, narrowed to the target's own list
        when it has one (a scale may have left some of those out), in the search's order."""
        return [m for m in self.methods if m in (target.methods or self.methods)]

    def at_scale(self, name: str) -> SearchSpec:
        """A validated copy with scale `name` applied; SpecError listing the scales."""
        if name not in self.scales:
            raise SpecError("scale", f"unknown scale {name!r}; defined: {', '.join(self.scales)}")
        scale = self.scales[name]
        data = self.model_dump(mode="json")
        for field in ("seeds", "ranks", "data_episodes", "steps_per_episode",
                      "composer_objectives", "composer_data"):
            if getattr(scale, field) is not None:
                data[field] = getattr(scale, field)
        for field in ("fixed_alpha", "alpha"):
            if getattr(scale, field) is not None:
                data[field] = [choice.model_dump(mode="json") for choice in getattr(scale, field)]
        if scale.targets is not None:
            data["targets"] = [t for t in data["targets"] if t["label"] in scale.targets]
        if scale.methods is not None:
            data["methods"] = [m for m in data["methods"] if m in scale.methods]
            for target in data["targets"]:
                if target["methods"] is not None:
                    target["methods"] = [m for m in target["methods"] if m in scale.methods]
            data["targets"] = [t for t in data["targets"] if t["methods"] != []]
        kept = {target["label"] for target in data["targets"]}
        data["alpha_trace"] = [trace for trace in data["alpha_trace"]
                               if trace["target"] in kept
                               and (scale.methods is None or trace["method"] in scale.methods)
                               and (trace["alpha"] is None or trace["alpha"] in data["alpha"])
                               and (trace["objective"] is None
                                    or trace["objective"] in data["composer_objectives"])
                               and (trace["composer_data"] is None
                                    or trace["composer_data"] in data["composer_data"])]
        for other in data["scales"].values():
            # Other scales may keep targets or methods this one drops; they no longer apply.
            if other["targets"] is not None:
                other["targets"] = [t for t in other["targets"] if t in kept] or None
            if other["methods"] is not None:
                other["methods"] = [m for m in other["methods"] if m in data["methods"]] or None
        if scale.num_samples is not None:
            data["searcher"]["num_samples"] = scale.num_samples
        if scale.max_concurrent_trials is not None:
            data["resources"]["max_concurrent_trials"] = scale.max_concurrent_trials
        data["applied_scale"] = name
        return parse_search(data)

    @property
    def stream_scale(self) -> str | None:
        """The stream's scale under the applied search scale (None: as written)."""
        return None if self.applied_scale is None else self.scales[self.applied_scale].stream_scale

    def stream_path(self) -> Path:
        """The stream file, resolved against the search file's folder."""
        path = Path(self.stream)
        if not path.is_absolute() and self.source is not None:
            path = Path(self.source).parent / path
        return path

    def load_stream(self) -> StreamSpec:
        """The stream at this search's stream scale, checked against the targets."""
        stream = load_stream(self.stream_path(), self.stream_scale)
        for index, target in enumerate(self.targets):
            task, _ = find_composer(stream, target.composer, f"targets[{index}].composer")
            _check_target_task(stream, task, index, self)
        return stream


def _positive_unique(values: list[int]) -> list[int]:
    for index, value in enumerate(values):
        if value < 1:
            raise FieldError((index,), f"must be >= 1, got {value}")
        if value in values[:index]:
            raise FieldError((index,), f"{value} is listed twice")
    return values


def find_composer(stream: StreamSpec, name: str, field: str) -> tuple[TaskSpec, ComposerSpec]:
    """(task, composer) of the composer called `name`; SpecError on `field` if none."""
    for task in stream.tasks:
        for composer in task.composers:
            if composer.name == name:
                return task, composer
    known = [c.name for t in stream.tasks for c in t.composers]
    raise SpecError(field, f"no composer {name!r} in stream {stream.name!r} "
                           f"(composers: {', '.join(known) or 'none'})")


def _check_target_task(stream: StreamSpec, task: TaskSpec, index: int,
                       search: SearchSpec) -> None:
    """Targets and the skills they compose must take their data from a generator or the
    store: tune refers to the stored datasets instead of importing them once per trial."""
    field = f"targets[{index}].composer"
    _, composer = find_composer(stream, search.targets[index].composer, field)
    for name in [task.name, *(s for s in composer.skills if s != "base")]:
        source = stream.task(name).data.source
        if source == "import":
            raise SpecError(field, f"task {name!r} imports its data; import it once with "
                                   "`psec data import` and refer to it with source: store")
    if any(n is not None for n in search.data_episodes) and task.data.source != "generate":
        raise SpecError("data_episodes", f"target task {task.name!r} does not generate its "
                                         "data, so its trajectory count cannot be changed")
    if "fisor" in search.target_methods(search.targets[index]) and task.objective not in FEASIBILITY_OBJECTIVES:
        raise SpecError(field, f"method fisor weighs by a feasibility critic, which needs "
                               f"costs: target task {task.name!r} has objective "
                               f"{task.objective!r}, not one of "
                               f"{', '.join(FEASIBILITY_OBJECTIVES)}")
    longest = max(len(name) for name in [task.name, *composer.skills, composer.name])
    if longest + 10 > 64:
        raise SpecError(field, "task, skill and composer names of a target must have at most "
                               "54 characters (tune appends '_<tag>')")


def parse_search(data: Any, source: str | None = None) -> SearchSpec:
    """Validate a search given as plain data."""
    if source is not None and isinstance(data, dict):
        data = {**data, "source": source}
    try:
        return SearchSpec.model_validate(data)
    except ValidationError as error:
        raise spec_error(error) from None


def load_search(path: str | Path, scale: str | None = None) -> SearchSpec:
    """Load and validate a search file (and its stream); apply `scale` when given."""
    search = parse_search(read_yaml(path), source=str(path))
    if scale is not None:
        search = search.at_scale(scale)
    search.load_stream()  # the stream and the targets in it must check out too
    return search
