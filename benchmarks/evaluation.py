"""Evaluation speed: env steps per second, one episode at a time against side by side.

    python -m benchmarks.evaluation --json          # walker and Meta-World (~3 min on 2 CPU cores)
    python -m benchmarks.evaluation --json --quick  # a few steps, for tests

One process with one torch thread, as in an evaluation's Ray task. For each env
(dm_control walker-walk, Meta-World reach-v3) and each acting policy (the base alone, and a
PSEC composer over k = 2 rank-8 skills, default network shape, random weights):

* `one_at_a_time` — episodes one after the other, one batch-1 policy call per env step:
  evaluation as it ran before episodes were batched;
* `side_by_side` — all 30 episodes at once, one policy call per env step for every live
  episode (`tasks.evaluation.rollout_batch`, `pipeline.acting.Acting.batch`);
* `env_only` — the env stepped with zero actions: the floor no policy call can go below.

Each row gives env steps/s (envs built before the clock starts: `env_build_s` says what
building them took) and what a 30-episode walker evaluation of 1000-step episodes
(10 episodes × 3 seeds) would take at that rate; `evaluation_speedup` divides the two
rates measured back to back in the same run. Policy weights do not change the cost, only
episode lengths would, and every episode here runs the same `--steps`.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from library.composition import AlphaConfig, Composer
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.lora import add_skill, lora_layers
from pipeline.acting import Acting
from tasks.evaluation import rollout, rollout_batch
from tasks.suites import get_suite

ENVS = {"walker": ("dmc", "walker-walk", 24, 6), "metaworld": ("metaworld", "reach-v3", 39, 4)}
EPISODES = 30
"""A walker evaluation: 10 episodes × 3 seeds."""
EPISODE_STEPS = 1000


def sampler(obs_dim: int, act_dim: int, composed: bool):
    """obs [B, S], noise -> actions [B, A]: the base alone, or a parameter-level composer
    over two trained-looking rank-8 skills."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    normaliser = StateNormalizer.from_data(torch.randn(1024, obs_dim, generator=g))
    policy = DiffusionPolicy(PolicyConfig(obs_dim, act_dim), normaliser).eval()
    if not composed:
        return policy.sample
    for name in ("walk", "run"):
        add_skill(policy, name, rank=8, generator=g)
        with torch.no_grad():
            for layer in lora_layers(policy).values():
                layer.lora_B[name].weight.normal_(0.0, 0.02, generator=g)
    composer = Composer(policy, ["walk", "run"], alpha=AlphaConfig(init="uniform"), generator=g)
    return composer.eval().sample


def timed(run, envs) -> tuple[float, int]:
    """Seconds and env steps of `run(envs)` (which returns the steps it took); the envs
    are built before the clock starts."""
    started = time.perf_counter()
    steps = run(envs)
    return time.perf_counter() - started, steps


def measure(env_key: str, composed: bool, steps: int, alone: int) -> list[dict]:
    suite_name, env_name, obs_dim, act_dim = ENVS[env_key]
    suite = get_suite(suite_name)
    sample = sampler(obs_dim, act_dim, composed)
    policy_name = "psec_k2" if composed else "base"

    def make_env():
        return suite.make_env(env_name, None, seed=0, horizon=max(steps, 1000))

    def one_at_a_time(envs):
        generator = torch.Generator().manual_seed(0)

        def act(obs: np.ndarray) -> np.ndarray:  # batch 1, as evaluation acted before
            with torch.no_grad():
                return sample(torch.as_tensor(obs)[None], generator)[0].numpy()

        return sum(e.length for e in rollout(envs[0], act, alone, seed=0, horizon=steps))

    def side_by_side(envs):
        acting = Acting(sample, seed=0)
        generators = [torch.Generator().manual_seed(s) for s in range(EPISODES)]
        episodes = rollout_batch(envs,
                                 lambda obs, live: acting.batch(obs, [generators[i] for i in live]),
                                 list(range(EPISODES)), horizon=steps)
        return sum(e.length for e in episodes)

    def env_only(envs):
        env, done = envs[0], 0
        for episode in range(alone):
            env.reset(seed=episode)
            for _ in range(steps):
                env.step(np.zeros(act_dim, np.float32))
                done += 1
        return done

    rows, rates = [], {}
    for how, run in (("one_at_a_time", one_at_a_time), ("side_by_side", side_by_side),
                     ("env_only", env_only)):
        if how == "env_only" and composed:
            continue  # the env's cost does not depend on the policy
        started = time.perf_counter()
        envs = [make_env() for _ in range(EPISODES if how == "side_by_side" else 1)]
        setup = time.perf_counter() - started
        seconds, env_steps = timed(run, envs)
        rates[how] = env_steps / seconds
        rows.append({"name": "eval_env_steps_per_s", "env": env_name, "policy": policy_name,
                     "how": how, "value": round(rates[how], 1),
                     "walker_eval_30x1000_s": round(EPISODES * EPISODE_STEPS / rates[how], 1),
                     "env_steps": env_steps, "seconds": round(seconds, 2),
                     "envs_built": len(envs), "env_build_s": round(setup, 2)})
    rows.append({"name": "evaluation_speedup", "env": env_name, "policy": policy_name,
                 "value": round(rates["side_by_side"] / rates["one_at_a_time"], 2), "goal": 10})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a few steps per episode (tests)")
    parser.add_argument("--steps", type=int, default=200, help="env steps per episode")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, alone = (5, 1) if args.quick else (args.steps, 3)
    for env_key in ENVS:
        for composed in (False, True):
            for row in measure(env_key, composed, steps, alone):
                print(json.dumps(row) if args.json else row, flush=True)


if __name__ == "__main__":
    main()
