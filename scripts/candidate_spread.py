"""What the official N-candidate evaluation chooses among: a stored skill's candidate
actions on states of a dataset and its task's critic's Q of them.

The IDQL-style evaluation (`library.diffusion.select_action`) samples N actions per state
and keeps the one the task's Q ranks highest. This prints, as one JSON object, over
`--states` states drawn from the dataset: Q of the dataset's own action, of one candidate
and of the kept one, V(s); Q's spread within a state (max − min, std); how far the
candidates lie from their mean and from the dataset's action, one candidate against the
kept one; and the share of saturated action entries (|a| > 0.95). Where the candidates
nearly coincide and Q barely tells them apart, the choice is noise in the critic.

    python scripts/candidate_spread.py --store stores/d4rl-shift-paper \\
        --item walker2d-friction-medium_4d1eb08c --dataset walker2d-friction-medium
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from library.lora import use_skills
from library.serialization import critics_from_item, load_base, load_skill, split_item
from library.store import SkillStore
from tasks.dataset import to_arrays

SATURATED = 0.95
"""|a| above this counts as a saturated action entry (actions lie in [-1, 1])."""


def spread(store_uri: str, item: str, dataset: str, states: int, candidates: int,
           seed: int) -> dict[str, float]:
    store = SkillStore(store_uri)
    entry = store.entry(item)
    if entry.kind != "skill":
        raise SystemExit(f"candidate_spread: {item!r} is a {entry.kind}, not a skill")
    config, tensors = store.load(item)
    own, critic_tensors = split_item(tensors)
    base_config, base_tensors = store.load(entry.parent)
    policy = load_base(base_config, split_item(base_tensors)[0])
    load_skill(policy, item, config, own)
    policy.eval()
    iql, _ = critics_from_item(config, critic_tensors, policy.normalizer)
    if iql is None:
        raise SystemExit(f"candidate_spread: {item!r} stored no critics to rank candidates")
    arrays = to_arrays(store.get_dataset(dataset))
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(arrays["obs"]), generator=generator)[:states]
    obs = torch.from_numpy(arrays["obs"])[rows]
    data_actions = torch.from_numpy(arrays["actions"])[rows]
    n = len(rows)
    with torch.no_grad(), use_skills(policy, [item]):
        repeated = obs.repeat_interleave(candidates, dim=0)
        sampled = policy.sample(repeated, generator).view(n, candidates, -1)
        q = iql.q(repeated, sampled.view(n * candidates, -1)).view(n, candidates)
        kept = sampled[torch.arange(n), q.argmax(dim=1)]
        one, centre = sampled[:, 0], sampled.mean(dim=1)
        return {
            "states": n, "candidates": candidates,
            "q_dataset_action": iql.q(obs, data_actions).mean().item(),
            "q_one_candidate": q[:, 0].mean().item(),
            "q_kept": iql.q(obs, kept).mean().item(),
            "v": iql.value(obs).mean().item(),
            "q_range_in_state": (q.max(dim=1).values - q.min(dim=1).values).mean().item(),
            "q_std_in_state": q.std(dim=1).mean().item(),
            "l2_one_to_candidate_mean": (one - centre).norm(dim=1).mean().item(),
            "l2_kept_to_candidate_mean": (kept - centre).norm(dim=1).mean().item(),
            "l2_one_to_dataset_action": (one - data_actions).norm(dim=1).mean().item(),
            "l2_kept_to_dataset_action": (kept - data_actions).norm(dim=1).mean().item(),
            "saturated_dataset": (data_actions.abs() > SATURATED).float().mean().item(),
            "saturated_one": (one.abs() > SATURATED).float().mean().item(),
            "saturated_kept": (kept.abs() > SATURATED).float().mean().item(),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="local store holding the skill")
    parser.add_argument("--item", required=True, help="the stored skill (its task's critics rank)")
    parser.add_argument("--dataset", required=True, help="the store's dataset to draw states from")
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--candidates", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = spread(args.store, args.item, args.dataset, args.states, args.candidates, args.seed)
    print(json.dumps({key: round(value, 4) for key, value in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
