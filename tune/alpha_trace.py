"""α(s) of a stored composer over one episode of its own rollout (paper Fig. 5).

The composer acts as it does in evaluation (`pipeline.acting.load_acting`, on one torch
thread: `pipeline.evaluation.rollout_threads`), and at every step its context network's
weights for the visited state are recorded: one line per composed skill, over the steps
of one episode on the target task. On a safety task the per-step cost is recorded too,
and steps that cost are shaded; where the task has a feasibility critic, its V_h(s) is
recorded and plotted beneath (> 0: the critic sees a hazard ahead), and the note gives
the composer's own skill's mean α with and without a hazard, so a reader sees whether the
weights move toward the safety skill near hazards (Fig. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from library.errors import StoreError
from library.names import BASE
from library.serialization import critics_from_item, split_item
from pipeline.acting import composer_critics, load_acting, load_composer
from pipeline.evaluation import rollout_threads
from tasks.spec import StreamSpec
from tasks.suites import get_suite
from tune.spec import AlphaTraceSpec, SearchSpec, find_composer
from tune.trials import TrialPoint, alpha_label, enumerate_points


@dataclass
class Trace:
    """One episode of a composer on its task, step by step."""

    skills: list[str]
    """The composed skills, in α's column order."""
    alphas: np.ndarray
    """α_i(s_t): [T, k]."""
    rewards: np.ndarray
    """Reward per step: [T]."""
    costs: np.ndarray
    """Cost per step (0 on suites without one): [T]."""
    hazard: np.ndarray | None
    """V_h(s_t) of the task's feasibility critic (> 0: the critic sees a violation ahead
    that no in-data action avoids), [T]; None when the task has no such critic."""
    states: np.ndarray
    """s_t, the visited states: [T, obs_dim]."""


def task_critics(store, name: str, composer):
    """(IQL critics, feasibility critic) of stored composer `name`'s task (held in that
    task's skill item, on the composer's normaliser); None for each the task lacks."""
    entry = store.entry(name)
    config, tensors = store.load(name)
    return critics_from_item(
        *composer_critics(store, (entry.task_spec or {}).get("name"), config,
                          split_item(tensors)[1]), composer.policy.normalizer)


def feasibility_critic(store, name: str, composer):
    """The feasibility critic of stored composer `name`'s task (`task_critics`); None when
    the task has none."""
    return task_critics(store, name, composer)[1]


def trace(store, name: str, task, seed: int = 0) -> Trace:
    """One episode of composer `name` on `task` (its eval settings: horizon, max_steps,
    IDQL candidates)."""
    composer = load_composer(store, name)
    act = load_acting(store, name, n_candidates=task.eval.n_candidates, seed=seed)
    feasibility = feasibility_critic(store, name, composer)
    suite = get_suite(task.suite)
    env = suite.make_env(task.env, task.dynamics, seed=seed, horizon=task.horizon)
    alphas, rewards, costs, hazard, states = [], [], [], [], []
    try:
        obs, _ = env.reset(seed=seed)
        limit = task.eval.max_steps or np.inf
        with rollout_threads():
            while len(alphas) < limit:
                with torch.no_grad():
                    state = torch.as_tensor(obs, dtype=torch.float32)[None]
                    states.append(np.asarray(obs, dtype=np.float32))
                    alphas.append(composer.alpha(state)[0].numpy())
                    if feasibility is not None:
                        hazard.append(float(feasibility.value(state)[0]))
                obs, reward, terminated, truncated, info = env.step(act(obs))
                rewards.append(float(reward))
                costs.append(suite.cost(info))
                if terminated or truncated:
                    break
    finally:
        env.close()
    return Trace(list(composer.skills), np.stack(alphas), np.asarray(rewards),
                 np.asarray(costs), np.asarray(hazard) if feasibility is not None else None,
                 np.stack(states))


def hazard_line(run: Trace) -> str | None:
    """The composer's own (newest) skill's mean α where the task's feasibility critic sees
    a hazard (V_h(s) > 0) and where it does not: the paper's Fig. 5 claim in two numbers.
    None without a feasibility critic."""
    if run.hazard is None:
        return None
    own = run.alphas[:, -1]
    parts = []
    for label, mask in (("V_h(s) > 0", run.hazard > 0), ("V_h(s) ≤ 0", run.hazard <= 0)):
        parts.append(f"{own[mask].mean():.2f} over the {int(mask.sum())} steps with {label}"
                     if mask.any() else f"no step with {label}")
    line = f"α of `{run.skills[-1]}` (the composer's own skill): " + "; ".join(parts) + "."
    if len(own) > 2 and own.std() > 0 and run.hazard.std() > 0:
        # α may follow V_h(s) only because both change as the episode goes on.
        steps = np.arange(len(own))
        line += (f" Over the episode its correlation with V_h(s) is "
                 f"{np.corrcoef(own, run.hazard)[0, 1]:+.2f}, with the step "
                 f"{np.corrcoef(own, steps)[0, 1]:+.2f} (V_h(s) with the step: "
                 f"{np.corrcoef(run.hazard, steps)[0, 1]:+.2f}).")
    return line


def trace_point(search: SearchSpec, spec: AlphaTraceSpec) -> TrialPoint:
    """The trial point whose composer the trace follows: its target, method and seed, at
    the α choice, composer weighting and composer data it names (unnamed: the search's
    first, whose points are listed first). StoreError if the search has none."""
    points = [p for p in enumerate_points(search)
              if p.target == spec.target and p.method == spec.method and p.seed == spec.seed
              and spec.alpha in (None, p.alpha)
              and spec.objective in (None, p.objective)
              and spec.composer_data in (None, p.composer_data or "stream")]
    if not points:
        chosen = "" if spec.alpha is None else f" and alpha {alpha_label(spec.alpha)}"
        if spec.objective is not None:
            chosen += f" and composer objective {spec.objective}"
        if spec.composer_data is not None:
            chosen += f" and composer data {spec.composer_data}"
        raise StoreError(f"no trial point {spec.method} on {spec.target} with seed "
                         f"{spec.seed}{chosen}")
    return points[0]


def plot_trace(search: SearchSpec, spec: AlphaTraceSpec, stream: StreamSpec, store,
               path: str) -> str:
    """Plot the α(s) trace of one of the search's `alpha_trace` composers; a one-line
    note."""
    point = trace_point(search, spec)
    target = search.target(spec.target)
    task, composer_spec = find_composer(stream, target.composer, "alpha_trace")
    name = f"{composer_spec.name}_{point.tag()}"
    if not store.exists(name):
        raise StoreError(f"composer {name!r} of trial {point.describe()} is not in the store")
    run = trace(store, name, task)
    skills, alphas, rewards, costs = run.skills, run.alphas, run.rewards, run.costs

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 2 if run.hazard is None else 3
    fig, axes = plt.subplots(rows, 1, figsize=(6.4, 2.6 + 0.8 * rows), sharex=True,
                             gridspec_kw={"height_ratios": [3] + [1] * (rows - 1)})
    top, bottom = axes[0], axes[-1]
    for index, skill in enumerate(skills):
        top.plot(alphas[:, index], label=skill if skill != BASE else "base (the zero adapter: W0 alone)")
    for step in np.flatnonzero(costs > 0):  # hazards: the steps that cost
        top.axvspan(step - 0.5, step + 0.5, color="red", alpha=0.12, linewidth=0)
    top.set_ylabel("α_i(s_t)")
    if run.hazard is not None:  # where the safety critic sees a hazard ahead
        middle = axes[1]
        middle.plot(run.hazard, color="darkorange")
        middle.axhline(0.0, color="black", linewidth=0.6)
        middle.fill_between(np.arange(len(run.hazard)), 0.0, run.hazard,
                            where=run.hazard > 0, color="darkorange", alpha=0.3)
        middle.set_ylabel("V_h(s_t)")
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
    note = (f"α(s) over one episode: composer `{name}` ({point.describe()}), "
            f"{len(rewards)} steps, return {rewards.sum():.1f}"
            + (f", cost {costs.sum():g} (shaded steps)." if costs.any() else "."))
    hazards = hazard_line(run)
    if hazards:
        note += (" Middle panel: V_h(s) of the task's feasibility critic (> 0: a violation "
                 f"ahead that no in-data action avoids). {hazards}")
    return note
