"""Composing stored skills with a context-aware weighting α(s; θ).

`Composer` holds a frozen policy (base + skills) and trains only θ. The four modes share
everything but the stage at which skills are combined (paper §4.3 and its baselines):

* "parameter" (PSEC): every layer computes W0 + Σ_i α_i(s) s_i B_i A_i, per sample.
* "fixed" (w/o context awareness): the same with one learnable constant α for all states.
* "noise" (NSEC): ε(a_t, s, t) = Σ_i α_i(s) ε_i(a_t, s, t), each ε_i from skill i alone.
* "action" (ASEC): a = Σ_i α_i(s) a_i, each a_i sampled by skill i alone.

Any number of skills compose. "base" in the list is the base alone: in "noise" and
"action" modes it is a policy of its own (ε_0, a_0) with its own weight; in "parameter" and
"fixed" modes it is dropped, because W0 is in every composed layer at weight 1 already (as
in the official code, whose composer weighs only the LoRA skills) and a weight on a zero
adapter would do nothing but take a share of a softmax.

By default a composer starts at the task's new skill (the last in the list) alone at full
strength, and a regulariser pulls the batch means of α back there (the official code's
`(mean α − α_full/2)² + (mean α_new − α_full)²`, written for k skills): composition starts
from the new skill alone and is credited only with what it adds to it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from library.config import StoredConfig, is_count, is_finite_number
from library.diffusion import DiffusionPolicy, Noise
from library.errors import SpecError, StoreError
from library.lora import DEFAULT_SCALING, skill_names, use_skills
from library.mish import Mish
from library.names import BASE

MODES = ("parameter", "noise", "action", "fixed")
OUTPUTS = ("raw", "softmax", "sigmoid")
INITS = ("uniform", "newest", "zero")

SKILL_BY_SKILL_ROWS = 128
"""From this many states up, "noise" and "action" modes run each skill on the batch by
itself (one pass per skill) instead of all k skills in one pass over k stacked copies. The
stacked pass multiplies every row by every skill's adapter columns, which at k = 19 skills
costs more than the frozen layers themselves: a training step at batch 1024 over base + 18
rank-8 skills took 0.31 s (noise) and 1.45 s (action) skill by skill against 0.62 s and
2.9 s stacked, one thread. Below it one stacked call beats k small ones. Sampling (evaluation)
always stacks, whatever its batch, so that an episode's actions do not depend on how many
are rolled out beside it. The two give the same ε_i and a_i up to float rounding; the
action mode's loss draws its noise in another order."""

# Logit gap that puts 99% of the weight where an initialisation asks for "all" of it and
# 1% where it asks for "none": exact 1 and 0 are out of reach of softmax and sigmoid.
_CONFIDENT = math.log(99.0)


@dataclass(frozen=True)
class AlphaConfig(StoredConfig):
    """How α(s) is parameterised: α = scale · u(z), z the network's (or constant's) output."""

    FIELD = "alpha"

    output: str = "raw"
    """u(z): "raw" (u = z, unbounded, as in the paper's code), "softmax" (u on the simplex)
    or "sigmoid" (each u_i in (0, 1) independently)."""
    scale: float = 1.0
    """Multiplies u; e.g. softmax with scale 2 lets the weights sum to 2."""
    init: str = "newest"
    """Where u starts, the same for every state: "newest" (all on the last skill in the
    list, the task's new skill: the official regulariser's target), "uniform" (1/k each) or
    "zero" (the base alone; raw only). Softmax and sigmoid reach "newest" and sigmoid
    "zero" approximately (99% / 1%)."""
    hidden: int = 256
    """Width of the two hidden layers of the context network."""
    reg: float = 1.0
    """Weight of the official code's regulariser, generalised to k skills:
    (mean_{s,i} α_i(s) − 1/k)² + (mean_s α_new(s) − 1)², which pulls the new skill toward
    full strength and the others toward zero *on average* while α(s) still varies with s.
    It is counted in the official code's units so that reg = 1 is its weight: there α is
    16 at full strength and the ε-loss sums over the A action dims where ours averages, so
    the term added to our loss is reg · 16² / A times the bracket. 0 turns it off."""

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise SpecError("alpha.output", f"must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        if self.init not in INITS:
            raise SpecError("alpha.init", f"must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.init == "zero" and self.output == "softmax":
            raise SpecError("alpha.init", "'zero' is impossible with softmax weights (they sum to 1)")
        if not (is_finite_number(self.scale) and self.scale > 0):
            raise SpecError("alpha.scale", f"must be a positive number, got {self.scale!r}")
        if not is_count(self.hidden):
            raise SpecError("alpha.hidden", f"must be a positive integer, got {self.hidden!r}")
        if not (is_finite_number(self.reg) and self.reg >= 0):
            raise SpecError("alpha.reg", f"must be a number >= 0, got {self.reg!r}")

    def initial_logits(self, k: int) -> Tensor:
        """z that gives the initial u for k skills: [k]."""
        if self.output == "raw":
            target = {"uniform": torch.full((k,), 1.0 / k), "zero": torch.zeros(k)}.get(self.init)
            if target is None:  # newest
                target = torch.zeros(k)
                target[-1] = 1.0
            return target
        if self.output == "softmax":
            z = torch.zeros(k)
            if self.init == "newest" and k > 1:
                z[-1] = _CONFIDENT + math.log(k - 1)
            return z
        # sigmoid
        if self.init == "uniform":
            p = min(1.0 / k, 0.99)
            return torch.full((k,), math.log(p / (1.0 - p)))
        z = torch.full((k,), -_CONFIDENT)
        if self.init == "newest":
            z[-1] = _CONFIDENT
        return z

    def weights(self, z: Tensor) -> Tensor:
        """α = scale · u(z): [..., k] -> [..., k]."""
        if self.output == "softmax":
            u = torch.softmax(z, dim=-1)
        elif self.output == "sigmoid":
            u = torch.sigmoid(z)
        else:
            u = z
        return self.scale * u


@dataclass(frozen=True)
class ActionPool:
    """Skill actions sampled once per training state (`Composer.action_pool`), for an
    action-mode composer's loss to draw from instead of sampling k denoising chains per
    visit of a state."""

    actions: Tensor
    """[k, draws, N, A]: draw d of skill i for state n."""

    def pick(self, index: Tensor) -> Tensor:
        """For the states `index` [B] (rows of the pooled data), one of each state's draws,
        uniformly from the global torch RNG (seeded per training step): [k, B, A]."""
        draws = self.actions.shape[1]
        which = torch.randint(draws, (len(index),), device=index.device)
        return self.actions[:, which, index]


def _init_linear(layer: nn.Linear, generator: torch.Generator | None) -> None:
    """nn.Linear's default initialisation, drawn from `generator` for reproducibility."""
    nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(layer.in_features)
    nn.init.uniform_(layer.bias, -bound, bound, generator=generator)


class ContextNet(nn.Module):
    """α(s; θ): normalised state [B, S] -> weights [B, k].

    The output layer starts at zero weight and the bias of `AlphaConfig.initial_logits`,
    so every state starts at the configured initial α; it still learns, because the hidden
    features feeding it are not zero.
    """

    def __init__(
        self, obs_dim: int, k: int, config: AlphaConfig, generator: torch.Generator | None = None
    ):
        super().__init__()
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(obs_dim, config.hidden), Mish(),
            nn.Linear(config.hidden, config.hidden), Mish(),
            nn.Linear(config.hidden, k),
        )
        with torch.no_grad():
            _init_linear(self.net[0], generator)
            _init_linear(self.net[2], generator)
            self.net[4].weight.zero_()
            self.net[4].bias.copy_(config.initial_logits(k))

    def forward(self, s_norm: Tensor) -> Tensor:
        return self.config.weights(self.net(s_norm))


class Composer(nn.Module):
    """Composes skills of a frozen `policy` with α(s); only θ (or `fixed`'s constant) trains.

    Training signal per mode: "parameter", "fixed" and "noise" use the policy's weighted
    ε-loss (paper Eq. 3) on the composed noise predictor. "action" cannot: the composition
    happens after sampling, where no ε-loss applies, so α is trained by the weighted
    squared error between the composed action Σ α_i(s) a_i and the dataset action, with
    each a_i drawn from skill i alone (no gradient through the frozen skills' sampling).
    """

    def __init__(
        self,
        policy: DiffusionPolicy,
        skills: list[str],
        mode: str = "parameter",
        alpha: AlphaConfig | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if mode not in MODES:
            raise SpecError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        skills = list(skills)
        if not skills:
            raise SpecError("skills", "at least one skill is needed")
        if len(set(skills)) != len(skills):
            raise SpecError("skills", f"names repeat in {skills}")
        known = skill_names(policy)
        unknown = [s for s in skills if s != BASE and s not in known]
        if unknown:
            raise StoreError(f"unknown skills {unknown} (known: {', '.join(known) or 'none'})")
        if mode in ("parameter", "fixed"):
            skills = [s for s in skills if s != BASE]  # W0 is always in, at weight 1
            if not skills:
                raise SpecError("skills", f"{mode} composition needs a skill besides 'base'")
        self.policy = policy.requires_grad_(False)
        self.skills = skills
        self.mode = mode
        self.alpha_config = alpha or AlphaConfig()
        k = len(skills)
        if mode == "fixed":
            self.logits = nn.Parameter(self.alpha_config.initial_logits(k))
            self.context = None
        else:
            self.logits = None
            self.context = ContextNet(policy.config.obs_dim, k, self.alpha_config, generator)

    # ------------------------------------------------------------------ weights
    def alpha(self, obs: Tensor) -> Tensor:
        """α(s) for raw states obs [B, S]: [B, k]."""
        if self.logits is not None:
            return self.alpha_config.weights(self.logits).expand(obs.shape[0], -1)
        return self.context(self.policy.normalizer(obs))

    def _layer_weights(self, obs: Tensor) -> Tensor:
        # "fixed" hands the layers one [k] vector (a cheaper path than [B, k] copies of it).
        if self.logits is not None:
            return self.alpha_config.weights(self.logits)
        return self.alpha(obs)

    def _live(self, alpha: Tensor) -> tuple[list[str], Tensor]:
        """Skills that can matter: at inference, those with a non-zero weight somewhere.

        Skipping the others saves work and makes a one-hot α reproduce its skill exactly.
        While α is being trained every skill stays, since each has a gradient.
        """
        if torch.is_grad_enabled() and alpha.requires_grad:
            return self.skills, alpha
        live = (alpha != 0).any(dim=0).tolist()
        keep = [i for i, on in enumerate(live) if on] or [0]
        return [self.skills[i] for i in keep], alpha[:, keep]

    # ------------------------------------------------------------------ one batched pass
    # A batch of B states runs k skills as k·B rows, the k copies of a state adjacent (row
    # b·k + i is state b under skill i): a state's rows stay one block, so one noise
    # generator per state (evaluation's per-episode noise, library.diffusion.Noise) draws
    # what it would draw for that state alone.
    def _per_skill(self, names: list[str], batch: int):
        """One-hot layer weights that run skill i on row b·k + i: [B·k, k]."""
        k = len(names)
        return torch.eye(k, device=self.policy.betas.device).repeat(batch, 1)

    @staticmethod
    def _stacked(names: list[str], batch: int, training: bool) -> bool:
        """Whether "noise" and "action" modes run the k skills as one pass over k stacked
        copies of the batch: always when sampling, so that an episode's actions never
        depend on how many are rolled out beside it; in a training loss, below
        `SKILL_BY_SKILL_ROWS` states."""
        return len(names) > 1 and (not training or batch < SKILL_BY_SKILL_ROWS)

    def _composed_eps(self, alpha: Tensor, names: list[str], stacked: bool):
        """ε(a_t, s, t) = Σ_i α_i ε_i, one pass per skill, or (`stacked`) all ε_i from one
        pass over k stacked copies of the batch, which must then run inside
        `use_skills(policy, names, self._per_skill(names, B))`."""
        k = len(names)
        net = self.policy.net

        def eps(a_t: Tensor, s_norm: Tensor, t: Tensor) -> Tensor:
            if stacked:
                batch = a_t.shape[0]
                e = net(a_t.repeat_interleave(k, dim=0), s_norm.repeat_interleave(k, dim=0),
                        t.repeat_interleave(k)).view(batch, k, -1)
                return torch.einsum("bk,bka->ba", alpha, e)  # [B, A]
            total = None
            for i, name in enumerate(names):
                with self._alone(name):
                    term = alpha[:, i : i + 1] * net(a_t, s_norm, t)
                total = term if total is None else total + term
            return total  # [B, A]

        return eps

    def _noise_composed(self, obs: Tensor, alpha: Tensor, names: list[str], run,
                        training: bool):
        """`run(eps_fn)` (the policy's loss or sampling) with ε composed by α."""
        if not self._stacked(names, obs.shape[0], training):
            return run(self._composed_eps(alpha, names, stacked=False))
        with use_skills(self.policy, names, self._per_skill(names, obs.shape[0])):
            return run(self._composed_eps(alpha, names, stacked=True))

    def _alone(self, name: str):
        """Skill `name` (or the base) switched on by itself."""
        return use_skills(self.policy, [] if name == BASE else [name])

    def _skill_actions(self, obs: Tensor, names: list[str], generator, training: bool
                       ) -> Tensor:
        """a_i sampled by each skill alone: [k, B, A], one skill after another, or
        (`_stacked`) in one pass."""
        k = len(names)
        if not self._stacked(names, obs.shape[0], training):
            actions = []
            for name in names:
                with self._alone(name):
                    actions.append(self.policy.sample(obs, generator))
            return torch.stack(actions)
        with use_skills(self.policy, names, self._per_skill(names, obs.shape[0])):
            actions = self.policy.sample(obs.repeat_interleave(k, dim=0), generator)
        return actions.view(obs.shape[0], k, -1).transpose(0, 1)

    def require_action_mode(self, field: str) -> None:
        """SpecError naming `field` unless this composer composes skill actions (ASEC)."""
        if self.mode != "action":
            raise SpecError(field, f"only an action-mode composer composes skill actions; "
                                   f"this one is {self.mode!r}")

    def action_pool(self, obs: Tensor, draws: int, seed: int, chunk: int = 1024) -> ActionPool:
        """Action mode: `draws` actions of every skill for each of the raw states obs [N, S],
        sampled once (skill by skill, `chunk` states at a time) from a generator seeded
        with `seed`, for a training loss to pick from (`loss(..., skill_actions=...)`)."""
        self.require_action_mode("action_draws")
        generator = torch.Generator(device=obs.device).manual_seed(seed)
        with torch.no_grad():
            per_draw = [torch.cat([self._skill_actions(part, self.skills, generator,
                                                       training=True)
                                   for part in obs.split(chunk)], dim=1)
                        for _ in range(draws)]  # each [k, N, A]
        return ActionPool(torch.stack(per_draw, dim=1))  # [k, draws, N, A]

    # ------------------------------------------------------------------ loss and sampling
    def loss(
        self,
        obs: Tensor,
        actions: Tensor,
        weights: Tensor | None = None,
        generator: torch.Generator | None = None,
        skill_actions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Weighted loss of the composed policy on raw obs [B, S], actions [B, A], weights [B],
        plus the α regulariser (term "alpha_reg", 0 when `AlphaConfig.reg` is 0) and the
        batch mean of each skill's weight (terms "alpha/<skill>", for the logs). Action
        mode: `skill_actions` [k, B, A] (e.g. `ActionPool.pick`) instead of fresh draws."""
        if skill_actions is not None:
            self.require_action_mode("skill_actions")
        alpha = self._layer_weights(obs)  # computed once: the loss, the regulariser, the logs
        terms = self._composed_loss(obs, actions, weights, generator, alpha, skill_actions)
        reg = self.regulariser(alpha)
        if self.alpha_config.reg > 0:
            terms["loss"] = terms["loss"] + reg
        terms["alpha_reg"] = reg.detach()
        mean = alpha.detach().reshape(-1, len(self.skills)).mean(dim=0)  # [k]
        terms.update({f"alpha/{name}": mean[i] for i, name in enumerate(self.skills)})
        return terms

    def alpha_reg(self, obs: Tensor) -> Tensor:
        """The α regulariser (`AlphaConfig.reg`) on raw obs [B, S]: a scalar.

        reg · 16²/A · [(mean_{s,i} α_i(s) − 1/k)² + (mean_s α_new(s) − 1)²], with the new
        skill last. It pulls the average weights, not each state's, so α(s) may still vary.
        """
        return self.regulariser(self._layer_weights(obs))

    def regulariser(self, alpha: Tensor) -> Tensor:
        """`alpha_reg` of weights already computed: [B, k], or [k] for "fixed"."""
        if self.alpha_config.reg == 0:
            return torch.zeros((), device=alpha.device)
        alpha = alpha.reshape(-1, alpha.shape[-1])  # a constant α is one state's worth
        k = alpha.shape[1]
        bracket = (alpha.mean() - 1.0 / k).pow(2) + (alpha[:, -1].mean() - 1.0).pow(2)
        units = DEFAULT_SCALING**2 / self.policy.config.act_dim
        return self.alpha_config.reg * units * bracket

    def _composed_loss(
        self, obs: Tensor, actions: Tensor, weights: Tensor | None, generator, alpha: Tensor,
        skill_actions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The mode's loss with the weights `alpha` of `_layer_weights(obs)`."""
        if self.mode in ("parameter", "fixed"):
            with use_skills(self.policy, self.skills, alpha):
                return self.policy.loss(obs, actions, weights, generator)
        if self.mode == "noise":
            names, alpha = self._live(alpha)
            return self._noise_composed(obs, alpha, names, lambda eps_fn: self.policy.loss(
                obs, actions, weights, generator, eps_fn=eps_fn), training=True)
        self.policy.check_inputs(obs, actions)
        if skill_actions is None:
            with torch.no_grad():
                skill_actions = self._skill_actions(obs, self.skills, generator,
                                                    training=True)  # [k, B, A]
        composed = torch.einsum("bk,kba->ba", alpha, skill_actions)
        mse = (composed - actions).pow(2).mean(dim=-1)  # [B]
        loss = mse.mean() if weights is None else (weights.detach() * mse).mean()
        return {"loss": loss, "mse": mse.detach().mean()}

    @torch.no_grad()
    def sample(self, obs: Tensor, generator: Noise = None) -> Tensor:
        """Actions of the composed policy: raw obs [B, S] -> [B, A] in [-1, 1]; `generator`
        may be one per block of rows (library.diffusion.Noise)."""
        if self.mode in ("parameter", "fixed"):
            with use_skills(self.policy, self.skills, self._layer_weights(obs)):
                return self.policy.sample(obs, generator)
        names, alpha = self._live(self.alpha(obs))
        if self.mode == "noise":
            return self._noise_composed(obs, alpha, names, lambda eps_fn: self.policy.sample(
                obs, generator, eps_fn=eps_fn), training=False)
        skill_actions = self._skill_actions(obs, names, generator, training=False)  # [k, B, A]
        if len(names) == 1:
            return (alpha[:, :1] * skill_actions[0]).clamp(-1.0, 1.0)
        return torch.einsum("bk,kba->ba", alpha, skill_actions).clamp(-1.0, 1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.sample(obs)
