"""The training loop every fit uses: a learner's loss and Adam.

Deterministic from `seed`: step k draws its batch and its loss noise (diffusion time
steps and ε) from RNG states derived from (seed, k) alone. A run resumed at step k from
(learner state, optimiser state) therefore repeats the uninterrupted run exactly, with
no generator state to checkpoint. Distributed data parallelism is the caller's: give
each worker its own seed and all-reduce gradients in `grad_hook`.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from library.data import OfflineData
from library.errors import ShapeError, SpecError, TrainingDiverged

if TYPE_CHECKING:
    from library.learners import Learner


@dataclass
class Checkpoint:
    """Everything needed to resume a run at `step` (the learner's state and Adam's)."""

    step: int
    """Optimisation steps completed."""
    learner_state: dict[str, Tensor]
    """`learner.state_dict()` after that step."""
    optimizer_state: dict[str, Any]
    """`torch.optim.Adam.state_dict()` after that step."""


@dataclass
class TrainResult:
    """What a finished run reports."""

    steps: int
    """Optimisation steps completed in total, counting those before `start_step`."""
    terms: dict[str, float]
    """Mean of every loss term over the last logging window."""
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """(step, mean terms over the window ending there), one entry per log."""
    optimizer_state: dict[str, Any] = field(default_factory=dict)
    """Adam's state at the end, to continue training later."""
    seconds: float = 0.0
    """Wall-clock time of this call."""


@contextmanager
def step_rng(seed: int, step: int, device: torch.device) -> Iterator[torch.Generator]:
    """A batch generator and a seeded global torch RNG for step `step` of run `seed`.

    The global RNG of the CPU and of `device` (which losses use for noise) is restored on
    exit, so training leaves no trace on the caller's random state.
    """
    batch_seed, noise_seed = np.random.SeedSequence([seed, step]).generate_state(2)
    accelerators = [] if device.type == "cpu" else [device.index or 0]
    with torch.random.fork_rng(devices=accelerators):
        if device.type == "cpu":
            # torch.manual_seed also queues seeds for every accelerator backend, which
            # costs more than a small training step; the CPU generator is all we use.
            torch.default_generator.manual_seed(int(noise_seed))
        else:
            torch.manual_seed(int(noise_seed))
        yield torch.Generator().manual_seed(int(batch_seed))


def cosine_lr(lr: float, step: int, decay_steps: int) -> float:
    """optax's cosine_decay_schedule (final value 0): lr·½(1 + cos(π·min(step, T)/T))."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step, decay_steps) / decay_steps))


def train(
    learner: Learner,
    data: OfflineData | list[OfflineData],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int | list[int],
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    grad_hook: Callable[[list[torch.nn.Parameter]], None] | None = None,
    start_step: int = 0,
    optimizer_state: dict[str, Any] | None = None,
    log_every: int = 100,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    checkpoint_every: int | None = None,
    lr_decay_steps: int | None = None,
    after_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Run optimisation steps `start_step` .. `steps` − 1 of `learner` on `data`.

    A `StackedSkillLearner` of k skills takes k datasets and k seeds (one per fit) and
    `batch_size` rows of each per step.

    `on_step(step, mean terms)` is called every `log_every` steps and after the last;
    `grad_hook(params)` right after backward; `on_checkpoint(Checkpoint)` every
    `checkpoint_every` steps and after the last (never of non-finite weights: the loss and
    the weights turning non-finite raise TrainingDiverged). To resume, load
    `checkpoint.learner_state` into the learner and pass `start_step=checkpoint.step,
    optimizer_state=checkpoint.optimizer_state`.
    `lr_decay_steps`: the rate follows `cosine_lr` over that many steps (None: constant);
    it is a function of the step alone, so a resumed run follows the same schedule.
    `after_step(done)` is called after every step with the number of steps done (keep it
    cheap: it runs 10^4–10^6 times).
    """
    _check_args(learner, data, steps, batch_size, lr, log_every, lr_decay_steps, start_step)
    params = learner.parameters()
    device = params[0].device
    optimizer = _adam(params, lr, optimizer_state)
    started = time.perf_counter()
    result = TrainResult(steps=start_step, terms={})
    window: dict[str, list[Tensor]] = {}
    for step in range(start_step, steps):
        if lr_decay_steps is not None:
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, step, lr_decay_steps)
        terms = learner.step_loss(data, batch_size, seed, step, device)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if grad_hook is not None:
            grad_hook(params)
        optimizer.step()
        learner.after_step()

        for key, value in terms.items():
            window.setdefault(key, []).append(value.detach())
        done = step + 1
        if after_step is not None:
            after_step(done)
        if done % log_every == 0 or done == steps:
            _close_window(result, window, done, on_step)
            window = {}
        if on_checkpoint is not None and (
            done == steps or (checkpoint_every is not None and done % checkpoint_every == 0)
        ):
            if not all(torch.isfinite(p).all() for p in params):
                # Between two loss checks: no checkpoint of broken weights, ever.
                raise TrainingDiverged(f"training diverged: the weights are not finite at "
                                       f"step {done} (lower train.lr)", done)
            # Copies: Adam updates its state tensors in place as training goes on.
            on_checkpoint(Checkpoint(done, learner.state_dict(), copy.deepcopy(optimizer.state_dict())))
    result.steps = steps
    result.optimizer_state = copy.deepcopy(optimizer.state_dict())
    result.seconds = time.perf_counter() - started
    return result


def _check_args(learner: Learner, data: OfflineData | list[OfflineData], steps: int,
                batch_size: int, lr: float, log_every: int, lr_decay_steps: int | None,
                start_step: int) -> None:
    for one in data if isinstance(data, list) else [data]:
        if (one.obs_dim, one.act_dim) != (learner.obs_dim, learner.act_dim):
            raise ShapeError(
                f"dataset has obs/act dims ({one.obs_dim}, {one.act_dim}) but the model "
                f"expects ({learner.obs_dim}, {learner.act_dim})"
            )
    for name, value in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        if value < 1:
            raise SpecError(f"train.{name}", f"must be a positive integer, got {value}")
    if not lr > 0:
        raise SpecError("train.lr", f"must be a positive number, got {lr}")
    if lr_decay_steps is not None and lr_decay_steps < 1:
        raise SpecError("train.lr_decay_steps", f"must be a positive integer, got {lr_decay_steps}")
    if not 0 <= start_step <= steps:
        raise SpecError("train.start_step", f"must lie in [0, {steps}], got {start_step}")


def _adam(params: list[torch.nn.Parameter], lr: float,
          state: dict[str, Any] | None) -> torch.optim.Adam:
    """Adam over `params`, from a checkpoint's `state` when resuming."""
    optimizer = torch.optim.Adam(params, lr=lr)
    if state is not None:
        try:
            optimizer.load_state_dict(state)
        except ValueError as err:  # another learner's optimiser: parameter groups differ
            raise ShapeError(f"optimizer checkpoint does not match the learner: {err}") from None
    return optimizer


def _close_window(result: TrainResult, window: dict[str, list[Tensor]], done: int,
                  on_step: Callable[[int, dict[str, float]], None] | None) -> None:
    """The mean terms of the steps since the last report: into `result` and `on_step`;
    a non-finite loss raises TrainingDiverged."""
    result.terms = {k: torch.stack(v).float().mean().item() for k, v in window.items()}
    result.history.append((done, result.terms))
    if not math.isfinite(result.terms["loss"]):
        raise TrainingDiverged(
            f"training diverged: the loss is {result.terms['loss']} by step {done} "
            "(look for extreme values in the data, or lower train.lr)", done)
    if on_step is not None:
        on_step(done, result.terms)
