"""The sections of a task spec (tasks/spec.py): data, dynamics, network, adapter, α,
composers, critics, training and evaluation, each a pydantic model checked on load with
the library's own rules (`library_rule`), and the pieces every spec model shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    field_validator,
    model_validator,
)

from library.composition import INITS, MODES, OUTPUTS, AlphaConfig
from library.critics import REWARD_NORMS, CriticConfig
from library.diffusion import TIME_EMBEDDINGS, PolicyConfig
from library.errors import PsecError, SpecError
from library.lora import KINDS, adapter_spec
from library.names import BASE, check_name
from library.weighting import WEIGHTINGS, WeightingConfig

Policy = Literal["expert", "medium", "random", "medium-replay", "medium-expert", "scripted"]
ImportFormat = Literal["d4rl", "dsrl", "minari", "parquet"]
# Choice lists are the library's tuples (one definition); Literal[tuple] lists its items.
Objective = Literal[WEIGHTINGS]
_ALPHA_DEFAULTS = AlphaConfig()
_POLICY_DEFAULTS = PolicyConfig(obs_dim=1, act_dim=1)
CRITIC_OBJECTIVES = ("advantage", "feasibility", "reward+feasibility")
FEASIBILITY_OBJECTIVES = ("feasibility", "reward+feasibility")
"""The objectives that weigh by the HJ feasibility critic, fitted on the data's costs."""


class FieldError(ValueError):
    """A validator's complaint about a field below the model being validated.

    Pydantic reports a model validator's ValueError at the model's own location; this
    carries the rest of the path (e.g. `("data", "path")`) so the message can name it.
    """

    def __init__(self, field: str | Sequence[str | int], message: str):
        super().__init__(message)
        self.field: tuple[str | int, ...] = (field,) if isinstance(field, str) else tuple(field)
        self.message = message


def from_psec(error: PsecError, field: str | None = None) -> FieldError:
    """Re-raise a SpecError/StoreError from suites or the name rule inside a validator."""
    message = str(error)
    if isinstance(error, SpecError) and message.startswith(f"{error.field}: "):
        message = message[len(error.field) + 2 :]
        field = field or error.field
    parts = [int(part) if part.isdigit() else part for part in field.split(".")] if field else []
    return FieldError(parts, message)


def _store_name(value: Any) -> str:
    """`value` if it satisfies library.names.check_name, else a ValueError saying why."""
    try:
        return check_name(value)
    except PsecError as error:
        raise ValueError(str(error)) from None


StoreName = Annotated[str, AfterValidator(_store_name)]
"""A name the store accepts (library.names.check_name): items, datasets, streams."""


def library_rule(build: Callable[[], object], section: str) -> None:
    """Check a spec section with the library's own rule: `build` constructs the library
    config the section feeds, and its SpecError (field `section.name` or `name`) becomes a
    FieldError on that field. The library is the one place a value's bounds are written."""
    try:
        build()
    except SpecError as error:
        message = str(error)[len(error.field) + 2:]
        raise FieldError(error.field.removeprefix(f"{section}.").split("."), message) from None


class SpecModel(BaseModel):
    """Shared config: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class Dynamics(SpecModel):
    """Scales applied to the simulator's physics (1.0 = unchanged)."""

    friction: float = Field(1.0, gt=0, description="Multiplies every geom's friction.")
    gravity: float = Field(1.0, gt=0, description="Multiplies the gravity vector.")
    thigh_size: float = Field(
        1.0, gt=0, description="Multiplies the thigh geoms' length and radius (mass follows)."
    )

    @property
    def is_default(self) -> bool:
        """True when nothing is changed."""
        return self.friction == 1.0 and self.gravity == 1.0 and self.thigh_size == 1.0


# Which DataSpec fields belong to which source, and which of them must be given.
_DATA_FIELDS = {
    "generate": ("policy", "episodes", "action_noise", "seed", "envs"),
    "import": ("format", "path"),
    "store": ("dataset",),
}
_DATA_REQUIRED = {
    "generate": ("policy", "episodes"),
    "import": ("format", "path"),
    "store": ("dataset",),
}


class DataSpec(SpecModel):
    """Where a task's offline dataset comes from.

    `generate` rolls out a policy in the task's env (or in each of `envs`, e.g. a multi-task
    Meta-World pretraining set), `import` converts a D4RL/DSRL/Minari/Parquet file, `store`
    reuses a dataset already in the skill store. Fields of the other sources must be absent.
    """

    source: Literal["generate", "import", "store"] = Field(description="generate | import | store.")
    policy: Policy | None = Field(
        None, description="generate: which data-collecting policy (expert, medium, ...)."
    )
    episodes: int | None = Field(
        None, ge=1, description="generate: episodes to collect (per env when `envs` is given)."
    )
    action_noise: float | None = Field(
        None, ge=0, description="generate: std of Gaussian noise added to actions (default 0)."
    )
    seed: int | None = Field(None, ge=0, description="generate: seed of the rollouts (default 0).")
    envs: list[str] | None = Field(
        None,
        min_length=1,
        description="generate: envs of the same suite to collect from instead of the task's "
        "env; the dataset is their union (a multi-task base). Checked by the suite.",
    )
    format: ImportFormat | None = Field(None, description="import: d4rl | dsrl | minari | parquet.")
    path: str | None = Field(
        None, description="import: file path/URI, or a Minari dataset id for format minari."
    )
    dataset: StoreName | None = Field(None, description="store: name of a dataset in the skill store.")
    max_transitions: int | None = Field(
        None,
        ge=1,
        description="Keep only the first N transitions of the dataset (any source); the cut "
        "transition becomes a timeout. E.g. D4RL-shift's 10k-transition target sets.",
    )

    @model_validator(mode="after")
    def _fields_match_source(self) -> DataSpec:
        for field in _DATA_REQUIRED[self.source]:
            if getattr(self, field) is None:
                raise FieldError(field, f"required when source is {self.source!r}")
        for source, fields in _DATA_FIELDS.items():
            if source == self.source:
                continue
            for field in fields:
                if getattr(self, field) is not None:
                    raise FieldError(field, f"only allowed when source is {source!r}")
        if self.source == "generate":
            # Defaults of the generate-only fields live here, once.
            if self.action_noise is None:
                self.action_noise = 0.0
            if self.seed is None:
                self.seed = 0
        return self


class NetworkSpec(SpecModel):
    """Shape of a base's noise predictor (library.diffusion.PolicyConfig); its skills and
    composers share it. The defaults are ours; `block_width: 4, time_embedding: learned,
    dropout: 0.1` is the official code's shape."""

    block_width: int = Field(
        _POLICY_DEFAULTS.block_width,
        description="Inner width of each residual block as a multiple of hidden (official: 4).",
    )
    time_embedding: Literal[TIME_EMBEDDINGS] = Field(
        _POLICY_DEFAULTS.time_embedding,
        description="fixed sinusoids or learned Fourier features (official: learned).",
    )
    dropout: float = Field(
        _POLICY_DEFAULTS.dropout,
        description="Rate of dropout at each block's input while a base or skill trains "
        "(official: 0.1; never while a composer trains or a policy acts).",
    )

    @model_validator(mode="after")
    def _library_checks(self) -> NetworkSpec:
        library_rule(lambda: PolicyConfig(obs_dim=1, act_dim=1, **self.model_dump()), "network")
        return self


class LoraSpec(SpecModel):
    """Shape of the task's new skill adapter."""

    rank: int = Field(8, description="LoRA rank n of every adapted layer.")
    alpha: float | None = Field(
        None,
        description="peft's lora_alpha: B A is scaled by alpha / rank. Default 16·rank, the "
        "official code's multiplier of 16 whatever the rank.",
    )
    kind: Literal[KINDS] = Field(
        "lora", description="lora (B A) or full (full-rank delta: PSEC(MLP) baseline)."
    )

    @model_validator(mode="after")
    def _library_checks(self) -> LoraSpec:
        library_rule(lambda: adapter_spec(self.kind, self.rank, self.alpha), "lora")
        return self


class AlphaSpec(SpecModel):
    """How the context network's outputs become composition weights α(s); the defaults
    are library.composition.AlphaConfig's (the official composer's start and regulariser)."""

    output: Literal[OUTPUTS] = Field(
        _ALPHA_DEFAULTS.output, description="raw (unbounded, as in the paper), softmax or sigmoid."
    )
    scale: float = Field(_ALPHA_DEFAULTS.scale, description="Multiplies the weights after `output`.")
    init: Literal[INITS] = Field(
        _ALPHA_DEFAULTS.init,
        description="Initial α: the newest (task's own) skill alone at full strength, equal "
        "weights, or zero.",
    )
    reg: float = Field(
        _ALPHA_DEFAULTS.reg,
        description="Weight of the official regulariser (mean α − 1/k)² + (mean α_new − 1)², "
        "in the official code's units (library.composition.AlphaConfig.reg); 0: off.",
    )

    @model_validator(mode="after")
    def _library_checks(self) -> AlphaSpec:
        # e.g. init zero with softmax weights: refused here, in the spec, not in a Ray fit.
        library_rule(lambda: AlphaConfig(output=self.output, scale=self.scale, init=self.init,
                                          reg=self.reg), "alpha")
        return self


class ComposerData(SpecModel):
    """Which episodes of the task's dataset a composer trains on (default: all of them).

    Filters apply in this order: cost, best returns, fraction (see tasks.subsets)."""

    fraction: float = Field(
        1.0, gt=0, le=1,
        description="Keep the first fraction of the (filtered) episodes, at least one; "
        "e.g. 0.1 for few-shot composition on 10% of the data.",
    )
    top_episodes: int | None = Field(
        None, ge=1, description="Keep only the N episodes with the highest return."
    )
    max_episode_cost: float | None = Field(
        None, ge=0,
        description="Keep only episodes whose total cost is at most this (the safe subset).",
    )

    @property
    def selects_all(self) -> bool:
        """Whether the subset is the whole dataset."""
        return self.fraction == 1.0 and self.top_episodes is None and self.max_episode_cost is None


class ComposerSpec(SpecModel):
    """A composer blending stored skills with the task's own new skill (added last)."""

    name: StoreName = Field(description="Store name of the composer (letters, digits, '_', '-').")
    skills: list[str] = Field(
        min_length=1,
        description="Stored skills to compose (names of earlier skill tasks) or 'base'.",
    )
    mode: Literal[MODES] = Field(
        "parameter",
        description="parameter (PSEC), noise (NSEC), action (ASEC) or fixed (constant α).",
    )
    alpha: AlphaSpec = Field(
        default_factory=AlphaSpec,
        description="α(s) parameterisation. Default: the new skill alone at the start with the "
        "official regulariser; in a composer task (no skill of its own) uniform, reg 0.",
    )
    objective: Objective | None = Field(
        None,
        description="Sample weighting of the composer's loss; default the task's. The paper "
        "trains the safe-composition composer by plain BC (bc) on its near-expert subset.",
    )
    steps: int = Field(
        10_000,
        ge=0,
        description="Training steps of α(s); 0 registers the initial α untrained (e.g. the "
        "uniform-α control: mode fixed, output raw, init uniform). Scales leave 0 alone.",
    )
    data: ComposerData = Field(
        default_factory=ComposerData,
        description="Episodes of the task's dataset the composer trains on (default all).",
    )
    bank: Literal["stored", "random"] = Field(
        "stored",
        description="stored: compose the listed skills; random: replace each listed stored "
        "skill by a LoRA with random directions and the same per-layer norms (the "
        "random-LoRA bank control; 'base' and the task's own skill stay).",
    )
    action_draws: int | None = Field(
        None,
        ge=1,
        description="Action mode (ASEC) only. None: every training step samples each skill's "
        "action afresh for its batch (the method as defined). N: before training, sample N "
        "actions per skill for every training state once, and let each step pick one of "
        "its state's N (library.composition.ActionPool): k denoising chains per state N "
        "times instead of per visit, a large saving where states are visited many times.",
    )

    @model_validator(mode="after")
    def _draws_need_action_mode(self) -> ComposerSpec:
        if self.action_draws is not None and self.mode != "action":
            raise FieldError(("action_draws",), "only an action-mode composer samples skill "
                                                f"actions to pool; this one is {self.mode!r}")
        return self

    @field_validator("skills")
    @classmethod
    def _skill_names(cls, skills: list[str]) -> list[str]:
        for index, skill in enumerate(skills):
            if skill != BASE:
                try:
                    check_name(skill)
                except PsecError as error:
                    raise FieldError((index,), str(error)) from None
            if skill in skills[:index]:
                raise FieldError((index,), f"{skill!r} is listed twice")
        return skills


class CriticSpec(SpecModel):
    """IQL / feasibility critics used by the advantage and feasibility objectives."""

    expectile: float = Field(0.7, description="IQL expectile τ of V.")
    beta: float = Field(3.0, description="Inverse temperature of the advantage weights.")
    discount: float = Field(0.99, description="Discount γ of the critics.")
    steps: int = Field(100_000, ge=1, description="Critic training steps.")
    reward_norm: Literal[REWARD_NORMS] = Field(
        "returns",
        description="returns: rewards × horizon / (max − min episode return) of the task's "
        "data before the critics see them (IQL's and the official code's D4RL scaling, "
        "1000 / (max − min), and FISOR's for DSRL); none: raw rewards.",
    )
    stop_at_timeouts: bool = Field(
        False,
        description="Whether a timeout stops the critics' bootstrapping as a terminal does. "
        "false: a time limit is not an absorbing state (IQL's rule, the official code's on "
        "D4RL); true: the official DSRL loader's masks, 1 − (terminal ∨ timeout), for the "
        "reward and feasibility critics alike.",
    )

    @model_validator(mode="after")
    def _library_checks(self) -> CriticSpec:
        library_rule(lambda: CriticConfig(obs_dim=1, act_dim=1, discount=self.discount,
                                           expectile=self.expectile), "critics")
        library_rule(lambda: WeightingConfig(beta=self.beta), "weighting")
        return self


class TrainSpec(SpecModel):
    """How the task's policy (base or skill) is fitted."""

    steps: int = Field(100_000, ge=1, description="Gradient steps.")
    batch_size: int = Field(1024, ge=1, description="Transitions per gradient step (all workers).")
    lr: float = Field(3e-4, gt=0, description="Adam learning rate (the start of its decay).")
    lr_decay: float = Field(
        3.0, ge=0,
        description="The policy's learning rate follows a cosine from lr to 0 over "
        "lr_decay × steps, as the official actor's does (it pretrains 1M steps on a 3M-step "
        "decay); 0 keeps it constant. Critics and composers keep theirs constant (official).",
    )
    ema: float = Field(
        1e-3, ge=0, le=1,
        description="Rate of the EMA of the fitted weights that is stored and evaluated "
        "(IDQL and the official code: 1e-3 every step); 0 stores the last iterate.",
    )
    workers: int | Literal["auto"] = Field(
        "auto", description="Ray Train workers, or 'auto' to size from the cluster's free CPUs."
    )

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        # Checked here so a bad value reads as one message, not one per union member.
        if value == "auto" or (
            isinstance(value, int) and not isinstance(value, bool) and value >= 1
        ):
            return value
        raise ValueError(f"must be an integer >= 1 or 'auto', got {value!r}")


class EvalSpec(SpecModel):
    """How a fitted policy is evaluated."""

    episodes: int = Field(10, ge=1, description="Episodes per seed.")
    # Env reset seeds derive from these; numpy refuses negative ones mid-rollout.
    seeds: list[NonNegativeInt] = Field(
        default_factory=lambda: [0], min_length=1, description="Eval seeds."
    )
    n_candidates: int = Field(
        1, ge=1, description="IDQL: candidate actions per state, ranked by the critic when present."
    )
    max_steps: int | None = Field(
        None, ge=1, description="Cap on steps per episode (default: the task's horizon)."
    )
    cost_threshold: float = Field(
        10.0, gt=0, description="Safety cost budget per episode (normalised cost = cost / this)."
    )
    curve_points: int = Field(
        0, ge=0, le=100,
        description="Learning curve of a base or skill stage: evaluated (eval.episodes "
        "episodes of the first eval seed) at step 0 and after every steps/N steps while it "
        "trains, without pausing it; stored in the item's metrics under 'curve' (forward "
        "transfer as Continual World defines it). 0: none.",
    )
    envs: list[str] | None = Field(
        None,
        min_length=1,
        description="Envs of the task's suite to roll its items out in instead of the task's "
        "env (list that too to keep it), e.g. a zero-shot composer evaluated on unseen "
        "tasks; each result row names its env. Checked by the suite.",
    )
    controls: list[Literal["single"]] = Field(
        default_factory=list,
        description="Controls rolled out on this task beside its own items. single: every "
        "item its composers compose other than the task's own skill (the base and each "
        "stored skill), alone, with these eval settings; its rows have this task as row and "
        "eval task and the item's own kind and method, so the best single stored skill sits "
        "beside the composers (a composition claim is made against it).",
    )
