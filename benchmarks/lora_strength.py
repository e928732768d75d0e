"""How fast a LoRA skill learns at peft's usual strength and at the official one, against
full fine-tuning, on the same data, seed and steps (issue 17, "LoRA strength").

    python -m benchmarks.lora_strength --json            # ~1 min on 2 CPU cores
    python -m benchmarks.lora_strength --json --quick    # a few steps, for tests

A toy continual step: a diffusion base (8-d states, 2-d actions) is pretrained by BC on
one state → action map, then each variant learns a new, nonlinear map from the same
data with the same seed: LoRA rank 8 at multiplier 2 (peft's lora_alpha = 2·r, kaiming-
uniform A: what psec did before), LoRA rank 8 at the official multiplier 16 (lecun-normal
A, the default now), and full fine-tuning of the base. One JSON line per variant with the
ε-loss (mean over the last 10% of steps) and the trained parameters; the walker score of
LoRA against full fine-tuning at a real budget is the DMC table's controls "new skill
alone (rank 8)" and "new skill alone (full)" (docs/RESULTS.md).
"""

from __future__ import annotations

import argparse
import copy
import json
import math

import numpy as np
import torch
from torch import nn

from library.data import OfflineData
from library.diffusion import DiffusionPolicy, PolicyConfig, StateNormalizer
from library.learners import BaseLearner, SkillLearner
from library.lora import lora_layers
from library.training import train

OBS_DIM, ACT_DIM = 8, 2


def toy_data(target, n: int = 4096, seed: int = 0) -> OfflineData:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    actions = np.clip(target(obs), -1, 1).astype(np.float32)
    return OfflineData.from_arrays(
        obs=obs, actions=actions, rewards=np.zeros(n, np.float32), next_obs=obs,
        terminals=np.ones(n, bool), timeouts=np.zeros(n, bool), episode=np.arange(n))


def old_task(s: np.ndarray) -> np.ndarray:
    return 0.5 * np.tanh(s[:, :ACT_DIM])


def new_task(s: np.ndarray) -> np.ndarray:
    """Nonlinear in the state, far from the old map."""
    return np.stack([np.sin(2 * s[:, 0]) * np.cos(s[:, 3]), np.tanh(s[:, 1] * s[:, 2])], axis=1)


def _peft_init(policy: DiffusionPolicy, name: str) -> None:
    """Redraw the skill's A as peft does (kaiming-uniform, a = √5), B stays zero."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(policy).values():
            nn.init.kaiming_uniform_(layer.lora_A[name].weight, a=math.sqrt(5), generator=g)


def run(steps: int, batch: int, lr: float, base_steps: int) -> list[dict]:
    torch.manual_seed(0)
    old, new = toy_data(old_task, seed=0), toy_data(new_task, seed=1)
    base = DiffusionPolicy(PolicyConfig(obs_dim=OBS_DIM, act_dim=ACT_DIM),
                           StateNormalizer.from_data(old.obs))
    train(BaseLearner(base, ema_rate=0.0), old, steps=base_steps, batch_size=batch, lr=1e-3,
          seed=0)
    variants = {
        "lora r8, multiplier 2 (peft alpha 2r, kaiming A)": dict(rank=8, alpha=16.0, peft=True),
        "lora r8, multiplier 16 (official, default)": dict(rank=8, alpha=None, peft=False),
        "full fine-tuning": None,
    }
    rows = []
    for label, shape in variants.items():
        policy = copy.deepcopy(base)
        if shape is None:
            learner = BaseLearner(policy, ema_rate=0.0)
        else:
            learner = SkillLearner(policy, "new", rank=shape["rank"], alpha=shape["alpha"],
                                   generator=torch.Generator().manual_seed(1), ema_rate=0.0)
            if shape["peft"]:
                _peft_init(policy, "new")
        result = train(learner, new, steps=steps, batch_size=batch, lr=lr, seed=3,
                       log_every=max(1, steps // 10))
        # The last logging window: the mean over the final tenth of the steps.
        rows.append({"name": "lora_strength", "variant": label, "steps": steps, "lr": lr,
                     "loss": round(result.terms["loss"], 5),
                     "trained_params": sum(p.numel() for p in learner.parameters()),
                     "seconds": round(result.seconds, 2)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--quick", action="store_true", help="a few steps (tests)")
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.quick:
        rows = run(steps=20, batch=64, lr=3e-4, base_steps=20)
    else:
        rows = run(steps=args.steps, batch=256, lr=3e-4, base_steps=2000)
    for row in rows:
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{row['variant']:<48} loss {row['loss']:.4f} after {row['steps']} steps "
                  f"({row['trained_params']} trained parameters, {row['seconds']} s)")


if __name__ == "__main__":
    main()
