"""α(s) of a stored composer over one episode of its own rollout (paper Fig. 5).

The composer acts as it does in evaluation (`pipeline.acting.load_acting`, on one torch
thread: `pipeline.evaluation.rollout_threads`), and at every step its context network's
weights for the visited state are recorded: one line per composed skill, over the steps
of one episode on the target task. On a safety task the
per-step cost is recorded too, and steps that cost are shaded, so a reader sees whether
the weights move toward the safety skill near hazards (Fig. 5).
"""

from __future__ import annotations

import numpy as np
import torch

from library.errors import StoreError
from library.names import BASE
from pipeline.acting import load_acting, load_composer
from pipeline.evaluation import rollout_threads
from tasks.spec import StreamSpec
from tasks.suites import get_suite
from tune.spec import AlphaTraceSpec, SearchSpec, find_composer
from tune.trials import TrialPoint, alpha_label, enumerate_points


def trace(store, name: str, task, seed: int = 0
          ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(skills, α per step [T, k], reward per step [T], cost per step [T]) of one episode
    of composer `name` on `task` (its eval settings: horizon, max_steps, IDQL candidates);
    the cost is 0 on suites without one."""
    composer = load_composer(store, name)
    act = load_acting(store, name, n_candidates=task.eval.n_candidates, seed=seed)
    suite = get_suite(task.suite)
    env = suite.make_env(task.env, task.dynamics, seed=seed, horizon=task.horizon)
    alphas, rewards, costs = [], [], []
    try:
        obs, _ = env.reset(seed=seed)
        limit = task.eval.max_steps or np.inf
        with rollout_threads():
            while len(alphas) < limit:
                with torch.no_grad():
                    weights = composer.alpha(torch.as_tensor(obs, dtype=torch.float32)[None])
                alphas.append(weights[0].numpy())
                obs, reward, terminated, truncated, info = env.step(act(obs))
                rewards.append(float(reward))
                costs.append(suite.cost(info))
                if terminated or truncated:
                    break
    finally:
        env.close()
    return list(composer.skills), np.stack(alphas), np.asarray(rewards), np.asarray(costs)


def plot_trace(search: SearchSpec, spec: AlphaTraceSpec, stream: StreamSpec, store,
               path: str) -> str:
    """Plot the α(s) trace of one of the search's `alpha_trace` composers; a one-line
    note."""
    points = [p for p in enumerate_points(search)
              if p.target == spec.target and p.method == spec.method and p.seed == spec.seed
              and spec.alpha in (None, p.alpha)]  # None: the first choice, listed first
    if not points:
        chosen = "" if spec.alpha is None else f" and alpha {alpha_label(spec.alpha)}"
        raise StoreError(f"no trial point {spec.method} on {spec.target} with seed "
                         f"{spec.seed}{chosen}")
    point: TrialPoint = points[0]
    target = next(t for t in search.targets if t.label == spec.target)
    task, composer_spec = find_composer(stream, target.composer, "alpha_trace")
    name = f"{composer_spec.name}_{point.tag()}"
    if not store.exists(name):
        raise StoreError(f"composer {name!r} of trial {point.describe()} is not in the store")
    skills, alphas, rewards, costs = trace(store, name, task)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 4.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]})
    for index, skill in enumerate(skills):
        top.plot(alphas[:, index], label=skill if skill != BASE else "base (the zero adapter: W0 alone)")
    for step in np.flatnonzero(costs > 0):  # hazards: the steps that cost
        top.axvspan(step - 0.5, step + 0.5, color="red", alpha=0.12, linewidth=0)
    top.set_ylabel("α_i(s_t)")
    # Two lines: composer and env names are long enough to run off one.
    top.set_title(f"{search.name}: α(s) of {name}\nover one episode on {task.env}",
                  fontsize="medium")
    top.legend(fontsize="small")
    bottom.plot(rewards, color="grey")
    bottom.set_ylabel("reward")
    bottom.set_xlabel("step t")
    if costs.any():
        cost_axis = bottom.twinx()
        cost_axis.plot(costs, color="red", linewidth=0.8)
        cost_axis.set_ylabel("cost", color="red")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return (f"α(s) over one episode: composer `{name}` ({point.describe()}), "
            f"{len(rewards)} steps, return {rewards.sum():.1f}"
            + (f", cost {costs.sum():g} (shaded steps)." if costs.any() else "."))
