"""Train-step time of noise- and action-level composers over many skills (issue 18).

    python -m benchmarks.many_skills --json

NSEC and ASEC compose skills outside the network: every training step runs each of the k
skills on the batch (ASEC samples a full denoising chain from each). The unseen-task
setting composes base + 18 skills, so this cost decides how long its baselines train.
Each round times, in this one process and one after another, a training step of the
default network's composer over base + `--skills` rank-8 skills at `--batch`, with the
k skills stacked into one pass (`SKILL_BY_SKILL_ROWS` above the batch) and skill by skill
(library.composition's choice at this batch); the figure is the median over rounds of
each way's fastest step after a warm-up one. Then ASEC with an action pool
(`action_draws`): the one-time sampling of `--pool-draws` actions per skill for
`--pool-states` training states, and a training step that picks from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.core import make_policy
from library import composition
from library.composition import AlphaConfig, Composer
from library.data import OfflineData
from library.learners import ComposerLearner
from library.lora import add_skill

WAYS = {"skill by skill": 1, "stacked": 10**9}
"""Each way of running the skills, as the `SKILL_BY_SKILL_ROWS` that selects it."""


def step_seconds(composer: Composer, obs: torch.Tensor, actions: torch.Tensor,
                 steps: int) -> float:
    """The fastest of `steps` Adam steps on the composer's loss, after one warm-up step."""
    optimiser = torch.optim.Adam(composer.context.parameters(), 3e-4)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        composer.loss(obs, actions)["loss"].backward()
        optimiser.step()
        optimiser.zero_grad()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def pooled(policy, names: list[str], states: int, draws: int, batch: int, steps: int) -> dict:
    """ASEC with an action pool: seconds to sample it, then the fastest training step."""
    generator = torch.Generator().manual_seed(1)
    obs = torch.randn(states, policy.config.obs_dim, generator=generator)
    actions = torch.rand(states, policy.config.act_dim, generator=generator) * 2 - 1
    zeros = torch.zeros(states)
    data = OfflineData(obs=obs, actions=actions, rewards=zeros, next_obs=obs, terminals=zeros,
                       timeouts=zeros, episode=torch.zeros(states, dtype=torch.long),
                       costs=zeros)
    learner = ComposerLearner(Composer(policy, ["base", *names], "action",
                                       AlphaConfig(init="uniform", reg=0)), action_draws=draws)
    optimiser = torch.optim.Adam(learner.parameters(), 3e-4)
    started = time.perf_counter()
    learner.step_loss(data, batch, 0, 0, torch.device("cpu"))  # samples the pool
    pool_seconds = time.perf_counter() - started
    times = []
    for step in range(1, steps + 2):
        started = time.perf_counter()
        learner.step_loss(data, batch, 0, step, torch.device("cpu"))["loss"].backward()
        optimiser.step()
        optimiser.zero_grad()
        times.append(time.perf_counter() - started)
    return {"metric": "action_pool_seconds", "k": len(names) + 1, "states": states,
            "draws": draws, "batch": batch, "threads": torch.get_num_threads(),
            "pool_seconds": round(pool_seconds, 2), "step_seconds": round(min(times[1:]), 4)}


def measure(skills: int, batch: int, rounds: int, steps: int,
            pool_states: int, pool_draws: int) -> list[dict]:
    policy = make_policy()
    generator = torch.Generator().manual_seed(0)
    names = [f"stored{i}" for i in range(skills)]
    for name in names:
        add_skill(policy, name, rank=8, generator=generator)
    obs = torch.randn(batch, policy.config.obs_dim, generator=generator)
    actions = torch.rand(batch, policy.config.act_dim, generator=generator) * 2 - 1
    default = composition.SKILL_BY_SKILL_ROWS
    rows = []
    try:
        for mode in ("noise", "action"):
            seconds: dict[str, list[float]] = {way: [] for way in WAYS}
            for _ in range(rounds):
                for way, threshold in WAYS.items():
                    composition.SKILL_BY_SKILL_ROWS = threshold
                    composer = Composer(policy, ["base", *names], mode,
                                        AlphaConfig(init="uniform", reg=0))
                    seconds[way].append(step_seconds(composer, obs, actions, steps))
            medians = {way: statistics.median(values) for way, values in seconds.items()}
            rows.append({"metric": "composer_step_seconds", "mode": mode, "k": skills + 1,
                         "batch": batch, "threads": torch.get_num_threads(),
                         **{way.replace(" ", "_"): round(m, 4) for way, m in medians.items()},
                         "speedup": round(medians["stacked"] / medians["skill by skill"], 2),
                         "default": "skill by skill" if batch >= default else "stacked"})
    finally:
        composition.SKILL_BY_SKILL_ROWS = default
    rows.append(pooled(policy, names, pool_states, pool_draws, batch, steps))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skills", type=int, default=18, help="stored skills besides the base")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per way and round")
    parser.add_argument("--pool-states", type=int, default=2000,
                        help="training states of the pooled ASEC (few-shot: 10 episodes × 200)")
    parser.add_argument("--pool-draws", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for row in measure(args.skills, args.batch, args.rounds, args.steps, args.pool_states,
                       args.pool_draws):
        if args.json:
            print(json.dumps(row))
        elif row["metric"] == "action_pool_seconds":
            print(f"action  k={row['k']} pooled: {row['draws']} draws × {row['states']} states "
                  f"in {row['pool_seconds']} s, then {row['step_seconds']:.4f} s a step")
        else:
            print(f"{row['mode']:<7} k={row['k']} batch {row['batch']}: stacked "
                  f"{row['stacked']:.3f} s, skill by skill {row['skill_by_skill']:.3f} s "
                  f"(x{row['speedup']}; default {row['default']})")


if __name__ == "__main__":
    main()
