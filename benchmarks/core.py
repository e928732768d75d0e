"""Speed of the core networks: training steps/s and action latency, as JSON lines.

    python -m benchmarks.core --json          # the figures (under a minute on 2 CPU cores)
    python -m benchmarks.core --json --quick  # a few repetitions, for tests

Training (batch 1024, hidden 256): full fine-tuning of the base, one LoRA skill (rank 8),
and a composer over k=3 skills (parameter level, only θ trains). Each step is forward,
backward and an Adam step; the three are stepped in turn. `value` is the median rate and
`best` the rate of the fastest step (the least disturbed by other processes).

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
import statistics
import time
from collections.abc import Callable

import torch

from library.composition import AlphaConfig, Composer
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.lora import add_skill, lora_layers, merge, trainable_only, unmerge, use_skills

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


def train_step(loss_fn: Callable[[], torch.Tensor], params: list) -> Callable[[], None]:
    """One optimiser step (forward, backward, Adam) as a callable."""
    opt = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def train_figures(steps: int) -> list[dict]:
    obs, actions = batch(1024)
    steps_by_what: dict[str, Callable[[], None]] = {}

    policy = make_policy()
    policy.requires_grad_(True)
    steps_by_what["full"] = train_step(lambda: policy.loss(obs, actions)["loss"], list(policy.parameters()))

    skill_policy = make_policy()
    params = trainable_only(skill_policy, SKILLS[0])

    def lora_loss() -> torch.Tensor:
        with use_skills(skill_policy, SKILLS[:1]):
            return skill_policy.loss(obs, actions)["loss"]

    steps_by_what["lora_r8"] = train_step(lora_loss, params)

    composer = Composer(make_policy(), SKILLS, "parameter", AlphaConfig(output="softmax"))
    params = [p for p in composer.parameters() if p.requires_grad]
    steps_by_what[f"composer_k{K}"] = train_step(lambda: composer.loss(obs, actions)["loss"], params)

    times = interleaved_times(steps_by_what, steps, warmup=1, budget_s=25.0)
    return [
        {"name": "train_steps_per_s", "what": what, "value": 1.0 / statistics.median(ts),
         "best": 1.0 / min(ts), "unit": "steps/s", "batch": 1024, "hidden": 256, "steps": len(ts)}
        for what, ts in times.items()
    ]


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


def latency_figures(reps: int) -> list[dict]:
    policy = make_policy()
    composer = Composer(policy, SKILLS, "parameter", AlphaConfig(output="softmax"))
    rows = []
    ratio = None
    for size in (1, 50):
        obs, _ = batch(size)

        def base(obs=obs) -> None:
            policy.sample(obs)

        def single(obs=obs) -> None:
            with use_skills(policy, SKILLS[:1]):
                policy.sample(obs)

        def composed(obs=obs) -> None:
            composer.sample(obs)

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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = latency_figures(reps=10 if args.quick else 300)
    rows += train_figures(steps=2 if args.quick else 12)
    for row in rows:
        row["threads"] = args.threads
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            extra = f" (batch {row['batch']})" if "batch" in row else ""
            print(f"{row['name']:<24} {row['what']:<40}{extra:<12} {row['value']:10.3f} {row['unit']}")


if __name__ == "__main__":
    main()
