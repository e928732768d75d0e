"""Speed of the core networks: training steps/s and action latency, as JSON lines.

    python -m benchmarks.core --json          # the figures (about 5 minutes on 2 CPU cores)
    python -m benchmarks.core --json --quick  # a few repetitions, for tests
    python -m benchmarks.core --json --device cuda   # the same on a GPU (the default there)
    python -m benchmarks.core --json --only weighted # the weighted skills' figures alone
    python -m benchmarks.core --json --only critics  # the critics' figures alone

Training (batch 1024 and 256, hidden 256): the base (every weight trains), one LoRA skill
(rank 8) on a frozen base, and a composer over k=3 skills (parameter level, only α(s)
trains), each through `library.training.train` as a fit runs it (batch sampling, per-step
seeding, Adam, EMA): `value` is the marginal rate, the steps of a 2n-step run minus those
of an n-step run over the difference in time, so start-up costs do not count. In the same
run, `gemm_gflops` is this machine's fp32 GEMM rate at the shapes of one train step (every
Linear layer's forward, input-gradient and weight-gradient products, best round) and
`ceiling` = that rate ÷ the step's FLOPs (`step_flops`: 6·P·B for the base, 4·P·B plus the
trainable extras for a frozen base): `fraction_of_ceiling` is how close the loop comes.
`composer_step_ratio` = base steps/s ÷ composer steps/s (goal ≤ 1.3).

Stacked fits (batch 1024 per fit): k rank-8 skills on one frozen base trained at once by
a `StackedSkillLearner` (one batched computation, each fit with its own data and seed).
`stacked_fit_steps_per_s` is the rate at which each of the k fits advances (the stacked
run's steps/s), `fraction_of_one_fit` that rate ÷ the single LoRA fit's (issue 18's GPU
goal: ≥ 0.7 at k = 8), `aggregate_speedup` k times it: above 1, k fits stacked finish
sooner than the same k fitted one after another in this process.

Weighted skills (batch 2048, the DSRL skills' batch): a rank-8 skill fitted with IQL
advantage weights over frozen critics, its weights looked up in the table of its dataset
(`_PolicyLearner.weight_table`: one critic pass over the data per fit, the default) against
weighing every batch with the critics' forward passes, the two timed in turn;
`weighted_table_speedup` = tabled ÷ per batch.

Critics (batch 2048, the DSRL fits' batch; hidden 256, 2 layers): IQL reward critics,
the feasibility (HJ) critic, and both on the same batches as FISOR's and a
reward+feasibility task's critics stage fits them (`CriticLearner`), through the same loop
and against the same kind of ceiling: `critic_step_flops` counts 6·P·B for the trained
Q twins and V and 2·P·B for the no-grad passes of a TD target (the target Q twins, and V at
the next states), and the GEMM rate is timed at the critics' layer shapes.

Latency (full T=5 sampling, batch 1 and 50): the base alone; one LoRA skill switched on
with `use_skills` (unmerged — its adapters run beside the base like the composer's do);
the same skill merged into the base; a k=3 parameter-level `Composer` (α(s) included).
`composed_latency_ratio` = composed ÷ single unmerged skill at batch 1, the like-for-like
comparison: the median over rounds of the two timed back to back (the machine may be
shared; `min` in each row is the least-disturbed call).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from library.composition import AlphaConfig, Composer
from library.data import OfflineData
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.learners import (
    BaseLearner,
    ComposerLearner,
    Learner,
    SkillLearner,
    StackedSkillLearner,
)
from library.lora import LoraLinear, add_skill, lora_layers, merge, unmerge, use_skills
from library.training import train

OBS_DIM, ACT_DIM, K = 24, 6, 3
SKILLS = [f"skill{i}" for i in range(K)]


def make_policy(hidden: int = 256) -> DiffusionPolicy:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    obs = torch.randn(4096, OBS_DIM, generator=g)
    policy = DiffusionPolicy(PolicyConfig(OBS_DIM, ACT_DIM, hidden=hidden), StateNormalizer.from_data(obs))
    for name in SKILLS:
        add_skill(policy, name, rank=8, alpha=16, generator=g)
    with torch.no_grad():  # non-zero B, as after training
        for layer in lora_layers(policy).values():
            for name in SKILLS:
                layer.lora_B[name].weight.normal_(0.0, 0.02, generator=g)
    return policy


def batch(size: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(size, OBS_DIM, generator=g), torch.rand(size, ACT_DIM, generator=g) * 2 - 1


def training_data(n: int = 20_000, costs: bool = False) -> OfflineData:
    """Random transitions of the benchmark's dims (the step's cost does not depend on them);
    with `costs`, a cost on a tenth of them."""
    rng = np.random.default_rng(2)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    return OfflineData.from_arrays(
        obs=obs, actions=rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32), next_obs=obs,
        terminals=np.zeros(n, bool), timeouts=np.arange(n) % 1000 == 999,
        episode=np.arange(n) // 1000,
        costs=(rng.random(n) < 0.1).astype(np.float32) if costs else None)


def learners(hidden: int = 256, device: str = "cpu") -> dict[str, Callable[[], Learner]]:
    """Fresh learners as fits build them, on `device`: the base (every weight trains), a
    rank-8 LoRA skill on a frozen base, a k=3 parameter-level composer (only α(s) trains)."""

    def base() -> Learner:
        torch.manual_seed(0)
        obs = torch.randn(4096, OBS_DIM, generator=torch.Generator().manual_seed(0))
        return BaseLearner(DiffusionPolicy(PolicyConfig(OBS_DIM, ACT_DIM, hidden=hidden),
                                           StateNormalizer.from_data(obs))).to(device)

    def skill() -> Learner:
        policy = make_policy(hidden)
        return SkillLearner(policy, "new", rank=8,
                            generator=torch.Generator().manual_seed(3)).to(device)

    def composer() -> Learner:
        return ComposerLearner(Composer(make_policy(hidden), SKILLS, "parameter")).to(device)

    return {"full": base, "lora_r8": skill, f"composer_k{K}": composer}


def base_linears(policy: DiffusionPolicy) -> list[torch.nn.Linear]:
    """The policy's own Linear layers (inside LoRA wrappers too), not its adapters'."""
    adapters = {id(m) for layer in lora_layers(policy).values()
                for part in (layer.lora_A, layer.lora_B, layer.full_delta) for m in part.values()}
    return [m for m in policy.modules()
            if isinstance(m, torch.nn.Linear) and not isinstance(m, LoraLinear) and id(m) not in adapters]


def step_flops(what: str, policy: DiffusionPolicy, batch_size: int, extra_params: int) -> float:
    """Multiply-adds ×2 of one train step's GEMMs: forward 2·P·B, gradient of the inputs
    2·P·B, gradient of the weights 2·P·B for the weights that train. P counts the policy's
    Linear weights; a frozen base's (skill, composer) needs no weight gradient, and the
    trainable extras (adapters, α's network: `extra_params`) need all three."""
    linear = sum(m.weight.numel() for m in base_linears(policy))
    if what == "full":
        return 6.0 * linear * batch_size
    return (4.0 * linear + 6.0 * extra_params) * batch_size


def synchronize(device: str) -> None:
    """Wait for the work queued on `device` (a GPU runs it asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def gemm_rate(policy: torch.nn.Module, batch_size: int, seconds: float = 1.5,
              device: str = "cpu",
              linears: Callable[[torch.nn.Module], list[torch.nn.Linear]] = base_linears
              ) -> float:
    """The machine's fp32 GEMM rate (FLOP/s) at the shapes of one train step of `policy`
    (its layers as `linears` lists them: the policy's own by default): each Linear layer's
    forward [B, in]·[in, out], input gradient [B, out]·[out, in] and weight gradient
    [out, B]·[B, in], timed together, best of repeated rounds."""
    shapes = [(m.in_features, m.out_features) for m in linears(policy)]
    g = torch.Generator().manual_seed(4)
    work = []
    for fan_in, fan_out in shapes:
        x = torch.randn(batch_size, fan_in, generator=g).to(device)
        w = torch.randn(fan_in, fan_out, generator=g).to(device)
        dy = torch.randn(batch_size, fan_out, generator=g).to(device)
        work.append((x, w, dy))
    flops = sum(6.0 * batch_size * x.shape[1] * w.shape[1] for x, w, _ in work)

    def one_round() -> None:
        for x, w, dy in work:
            torch.mm(x, w)
            torch.mm(dy, w.t())
            torch.mm(dy.t(), x)
        synchronize(device)

    one_round()
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        one_round()
        best = min(best, time.perf_counter() - started)
    return flops / best


def stacked(k: int, hidden: int = 256, device: str = "cpu") -> Callable[[], Learner]:
    """A fresh learner of k rank-8 skills fitted at once on the benchmark's base."""

    def make() -> Learner:
        return StackedSkillLearner(make_policy(hidden), [f"new{j}" for j in range(k)], rank=8,
                                   generators=[torch.Generator().manual_seed(3 + j)
                                               for j in range(k)]).to(device)

    return make


def train_rate(make: Callable[[], Learner], data: OfflineData, batch_size: int, steps: int,
               attempts: int = 3, fits: int = 1) -> float:
    """Steps/s of `library.training.train` as a fit runs it, without its fixed costs: the
    difference between a run of 2·steps and one of `steps`, on fresh learners, after a
    warm-up run (the first run in a process pays ~2 s of one-time kernel set-up, which
    would otherwise make the difference, and the rate, look twice as good).

    Other load on the machine can slow the shorter run more than the longer one, so that
    the difference says nothing (seen here: 1e11 steps/s). A difference is kept only if
    the extra steps took at least half the shorter run's time (i.e. the fixed costs are
    below the steps' own time, as they are by far at these sizes); otherwise the pair is
    timed again, up to `attempts` times, and NaN says the machine was too disturbed.
    `fits` > 1: a stacked learner of that many fits, each given `data` and its own seed.
    (On a GPU the run's last loss read waits for the queued steps, so the times are whole.)"""
    data, seed = ([data] * fits, list(range(fits))) if fits > 1 else (data, 0)
    train(make(), data, min(steps, 20), batch_size, lr=3e-4, seed=seed)
    for _ in range(attempts):
        seconds = []
        for n in (steps, 2 * steps):
            learner = make()
            started = time.perf_counter()
            train(learner, data, n, batch_size, lr=3e-4, seed=seed, log_every=100)
            seconds.append(time.perf_counter() - started)
        difference = seconds[1] - seconds[0]
        if difference >= 0.5 * seconds[0]:
            return steps / difference
    return math.nan


def _rounded(value: float, digits: int) -> float | None:
    """`value` rounded; None (JSON null: not measured) for NaN."""
    return None if math.isnan(value) else round(value, digits)


def stacked_figures(steps: int, single: float | None, ks: tuple[int, ...],
                    device: str = "cpu") -> list[dict]:
    """Each fit's steps/s when k LoRA fits train stacked at batch 1024 per fit, against
    `single`, one LoRA fit's steps/s measured in the same run."""
    data = training_data().to(device)
    rows = []
    for k in ks:
        rate = train_rate(stacked(k, device=device), data, 1024, max(steps // k, 3), fits=k)
        fraction = rate / (single or math.nan)
        rows.append({"name": "stacked_fit_steps_per_s", "what": f"lora_r8 x {k} stacked",
                     "batch": 1024, "fits": k, "value": _rounded(rate, 2), "unit": "steps/s",
                     "fraction_of_one_fit": _rounded(fraction, 3),
                     "aggregate_speedup": _rounded(k * fraction, 2),
                     "goal": 0.7 if k == 8 else None})
    return rows


def train_figures(steps: int, batches: tuple[int, ...] = (1024, 256),
                  device: str = "cpu") -> list[dict]:
    """Train steps/s of each learner through the real loop, and the fraction of the GEMM
    ceiling (the machine's rate at the step's shapes ÷ the step's FLOPs) it reaches. The
    data stay on `device`, as a fit there keeps them."""
    data = training_data().to(device)
    rows = []
    for batch_size in batches:
        for what, make in learners(device=device).items():
            learner = make()
            policy = learner.composer.policy if isinstance(learner, ComposerLearner) else learner.policy
            extra = 0 if what == "full" else sum(p.numel() for p in learner.parameters())
            flops = step_flops(what, policy, batch_size, extra)
            rate = gemm_rate(policy, batch_size, device=device)
            measured = train_rate(make, data, batch_size, steps * (4 if batch_size < 1024 else 1))
            ceiling = rate / flops
            rows.append({"name": "train_steps_per_s", "what": what, "batch": batch_size,
                         "value": _rounded(measured, 2), "unit": "steps/s",
                         "ceiling": round(ceiling, 1),
                         "fraction_of_ceiling": _rounded(measured / ceiling, 3),
                         "gemm_gflops": round(rate / 1e9, 1), "step_gflop": round(flops / 1e9, 3),
                         "hidden": 256, "steps": steps, "goal": 0.75 if what == "full" else None})
    for batch_size in batches:
        by_what = {row["what"]: row["value"] for row in rows if row["batch"] == batch_size}
        ratio = (by_what["full"] or math.nan) / (by_what[f"composer_k{K}"] or math.nan)
        rows.append({"name": "composer_step_ratio", "what": f"full / composer_k{K} steps/s",
                     "batch": batch_size, "value": _rounded(ratio, 2),
                     "unit": "x", "goal": 1.3})
    return rows


def weighted_figures(steps: int, batch_size: int = 2048, device: str = "cpu") -> list[dict]:
    """Steps/s of an advantage-weighted LoRA skill with its dataset's weights tabled and
    with every batch weighed by the critics, and the ratio of the two."""
    from library.critics import CriticConfig, IQLCritics

    data = training_data().to(device)

    def make(tabled: bool) -> Callable[[], Learner]:
        def skill() -> Learner:
            policy = make_policy()
            torch.manual_seed(5)
            iql = IQLCritics(CriticConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM), policy.normalizer)
            learner = SkillLearner(policy, "new", rank=8, weighting="advantage", iql=iql,
                                   generator=torch.Generator().manual_seed(3)).to(device)
            if not tabled:
                learner.weight_table = lambda data, device: None
            return learner
        return skill

    tabled = train_rate(make(True), data, batch_size, steps)
    per_batch = train_rate(make(False), data, batch_size, steps)
    rows = [{"name": "train_steps_per_s", "what": f"lora_r8 advantage, weights {what}",
             "batch": batch_size, "value": _rounded(rate, 2), "unit": "steps/s"}
            for what, rate in (("tabled", tabled), ("per batch", per_batch))]
    rows.append({"name": "weighted_table_speedup", "what": "tabled / per batch steps/s",
                 "batch": batch_size, "value": _rounded(tabled / per_batch, 3), "unit": "x"})
    return rows


CRITIC_BATCH = 2048
"""Batch of the critics' figures (the DSRL critics' batch at the paper scale)."""


def critic_learners(device: str = "cpu") -> dict[str, Callable[[], Learner]]:
    """Fresh critic learners as a critics stage builds them: IQL, feasibility, both."""
    from library.critics import CriticConfig, FeasibilityConfig, FeasibilityCritic, IQLCritics
    from library.learners import CriticLearner

    normalizer = StateNormalizer.from_data(
        torch.randn(4096, OBS_DIM, generator=torch.Generator().manual_seed(0)))

    def iql() -> IQLCritics:
        return IQLCritics(CriticConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM), normalizer)

    def feasibility() -> FeasibilityCritic:
        return FeasibilityCritic(FeasibilityConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM), normalizer)

    def make(*parts: str) -> Callable[[], Learner]:
        def learner() -> Learner:
            torch.manual_seed(6)
            return CriticLearner(iql() if "iql" in parts else None,
                                 feasibility() if "feasibility" in parts else None).to(device)
        return learner

    return {"iql": make("iql"), "feasibility": make("feasibility"),
            "iql+feasibility": make("iql", "feasibility")}


def all_linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    """Every Linear layer of `module` (a critic learner's: Q twins, their targets, V)."""
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def critic_step_flops(learner: Learner, batch_size: int) -> float:
    """Multiply-adds ×2 of one critic step's GEMMs (see the module doc): 6·P·B for the
    trained Q twins and V, 2·P·B for each no-grad pass (target Q twins, V at next states)."""
    flops = 0.0
    for critic in learner.critics.values():
        q = sum(m.weight.numel() for m in all_linears(critic.q_nets))
        v = sum(m.weight.numel() for m in all_linears(critic.value_net))
        flops += (6.0 * (q + v) + 2.0 * (q + v)) * batch_size
    return flops


def critic_figures(steps: int, batch_size: int = CRITIC_BATCH, device: str = "cpu") -> list[dict]:
    """Critic steps/s through the real loop, and the fraction of the GEMM ceiling."""
    data = training_data(costs=True).to(device)
    rows = []
    for what, make in critic_learners(device).items():
        learner = make()
        flops = critic_step_flops(learner, batch_size)
        ceiling = gemm_rate(learner.module, batch_size, device=device, linears=all_linears) / flops
        measured = train_rate(make, data, batch_size, steps)
        rows.append({"name": "critic_steps_per_s", "what": what, "batch": batch_size,
                     "value": _rounded(measured, 2), "unit": "steps/s",
                     "ceiling": round(ceiling, 1),
                     "fraction_of_ceiling": _rounded(measured / ceiling, 3),
                     "step_gflop": round(flops / 1e9, 3), "hidden": 256, "steps": steps})
    return rows


def interleaved_times(
    fns: dict[str, Callable[[], object]], reps: int, warmup: int = 5, budget_s: float = 15.0
) -> dict[str, list[float]]:
    """Seconds per call of each function, timed round-robin after a short warm-up.

    Round-robin makes load from other processes hit every variant alike; each round's
    calls run back to back, so ratios within a round are fair even when rounds are not.
    Stops early (after at least 3 rounds) once `budget_s` has passed, so a busy machine
    cannot stretch the run.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + budget_s
    for rep in range(reps):
        if rep >= 3 and time.perf_counter() > deadline:
            break
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def latency_figures(reps: int, device: str = "cpu") -> list[dict]:
    policy = make_policy().to(device)
    composer = Composer(policy, SKILLS, "parameter", AlphaConfig(output="softmax")).to(device)
    rows = []
    ratio = None
    for size in (1, 50):
        obs = batch(size)[0].to(device)

        def base(obs=obs) -> None:
            policy.sample(obs)
            synchronize(device)

        def single(obs=obs) -> None:
            with use_skills(policy, SKILLS[:1]):
                policy.sample(obs)
            synchronize(device)

        def composed(obs=obs) -> None:
            composer.sample(obs)
            synchronize(device)

        size_reps = reps if size == 1 else max(reps // 5, 3)
        with torch.inference_mode():
            times = interleaved_times(
                {"base": base, "single_skill": single, f"composed_k{K}": composed}, size_reps,
                budget_s=8.0,
            )
            merge(policy, SKILLS[0])
            times["single_skill_merged"] = interleaved_times({"m": base}, size_reps, budget_s=4.0)["m"]
            unmerge(policy, SKILLS[0])
        for what, ts in times.items():
            rows.append({"name": "action_latency_ms", "what": what, "batch": size,
                         "value": statistics.median(ts) * 1e3, "min": min(ts) * 1e3,
                         "unit": "ms", "T": policy.config.T, "reps": len(ts)})
        if size == 1:
            paired = [c / s for c, s in zip(times[f"composed_k{K}"], times["single_skill"])]
            ratio = {"value": statistics.median(paired),
                     "ratio_of_minimums": min(times[f"composed_k{K}"]) / min(times["single_skill"])}
    rows.append({"name": "composed_latency_ratio", "what": f"composed_k{K} / single_skill (unmerged) at batch 1",
                 **ratio, "unit": "x", "goal": 1.5})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="few repetitions (for tests)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the networks and data live (default: cuda when present)")
    parser.add_argument("--only", choices=("weighted", "critics"),
                        help="one group of figures alone: `weighted` (the weighted skills') "
                             "or `critics`")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = 3 if args.quick else 100
    rows = []
    if args.only is None:
        rows += latency_figures(reps=10 if args.quick else 300, device=args.device)
        rows += train_figures(steps=steps, batches=(1024,) if args.quick else (1024, 256),
                              device=args.device)
        single = next(row["value"] for row in rows
                      if row["name"] == "train_steps_per_s" and row["what"] == "lora_r8")
        rows += stacked_figures(steps, single, ks=(2,) if args.quick else (2, 8),
                                device=args.device)
    if args.only in (None, "weighted"):
        rows += weighted_figures(steps // 2 if steps > 3 else steps, device=args.device)
    if args.only in (None, "critics"):
        rows += critic_figures(steps // 2 if steps > 3 else steps, device=args.device)
    for row in rows:
        row["threads"], row["device"] = args.threads, args.device
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            extra = f" (batch {row['batch']})" if "batch" in row else ""
            print(f"{row['name']:<24} {row['what']:<40}{extra:<12} {row['value']:10.3f} {row['unit']}")


if __name__ == "__main__":
    main()
