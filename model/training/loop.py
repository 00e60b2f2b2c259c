"""The training loop on cached features: schedule, optimiser steps, what an incremental step may
train, and why the loop stopped."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from model.network.iumad import IUMADNet
from model.network.label_classifier import LabelClassifier
from model.training.convergence import ConvergenceWatch
from model.training.features import FeatureSet
from model.training.losses import iumad_losses
from model.training.options import DEFAULT_EPOCHS, ProgressCallback, TrainingCancelled, TrainingOptions


def _learning_rate_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` of the run, then cosine decay to 0 at progress 1."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


def _anchor_penalty(net: IUMADNet, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for name, parameter in net.named_parameters():
        reference = anchor.get(name)
        if reference is None:
            continue
        if reference.shape == parameter.shape:
            total = total + (parameter - reference).pow(2).sum()
        elif parameter.dim() >= 1 and reference.shape[1:] == parameter.shape[1:]:  # a grown classifier
            total = total + (parameter[: reference.shape[0]] - reference).pow(2).sum()
    return total


KeptRows = list[tuple[torch.nn.Parameter, torch.Tensor]]
"""Grown parameters whose first rows belong to old objects: (parameter, those rows as they must stay)."""


def train_only_new_objects(net: IUMADNet, first_label: int) -> KeptRows:
    """An incremental step of a network with object adapters trains only what is the new objects':
    their adapters and their rows of the label classifiers. Every shared weight is frozen and every
    old object's row is restored after each step, so old objects reconstruct bit-identically."""
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    for branch in net.branches.values():
        for adapters in branch.adapters or ():
            for parameter in adapters.parameters_of(first_label):
                parameter.requires_grad_(True)
    kept: KeptRows = []
    for module in net.modules():
        if isinstance(module, LabelClassifier):
            for parameter in (module.out.weight, module.out.bias):
                parameter.requires_grad_(True)
                kept.append((parameter, parameter.detach()[:first_label].clone()))
    return kept


@dataclass(frozen=True)
class _Schedule:
    """How long a training loop runs: a step cap (epochs), a time budget, or both."""

    batch_size: int
    steps_per_epoch: int
    max_steps: int | None  # None: the time budget alone decides
    budget_s: float | None

    @classmethod
    def of(cls, count: int, options: TrainingOptions) -> _Schedule:
        batch_size = min(options.batch_size, count)
        steps_per_epoch = max(1, count // batch_size)
        budget_s = options.loop_budget_s()
        epochs = options.epochs if options.epochs is not None else (None if budget_s else DEFAULT_EPOCHS)
        max_steps = max(1, epochs * steps_per_epoch) if epochs is not None else None
        return cls(batch_size, steps_per_epoch, max_steps, budget_s)

    def progress(self, step: int, elapsed_s: float) -> float:
        """The larger of steps done / step cap and time spent / budget, at most 1."""
        by_steps = step / self.max_steps if self.max_steps is not None else 0.0
        by_time = elapsed_s / self.budget_s if self.budget_s is not None else 0.0
        return min(1.0, max(by_steps, by_time))


def fit(
    net: IUMADNet,
    features: FeatureSet,
    labels: torch.Tensor,
    options: TrainingOptions,
    *,
    learning_rate: float,
    anchor: dict[str, torch.Tensor] | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    kept_rows: KeptRows = (),
    watch: ConvergenceWatch | None = None,
) -> dict:
    """The training loop on cached features. Returns a summary (steps, seconds, loss curve, why it
    stopped).

    The schedule runs on progress = the larger of steps done / step cap and time spent / budget, so
    a time-budgeted run uses its whole budget with a complete warm-up and cosine decay, whatever a
    step costs on this machine. With a `watch` (the held-out normals), the schedule is warm-up,
    constant, decay, and the loop ends as soon as the object has converged and annealed
    (model/training/convergence.py); the budget still bounds it.
    """
    generator = torch.Generator().manual_seed(options.seed)
    count = len(features)
    schedule = _Schedule.of(count, options)
    batch_size, steps_per_epoch, max_steps = schedule.batch_size, schedule.steps_per_epoch, schedule.max_steps
    optimiser = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=learning_rate, weight_decay=options.weight_decay
    )
    net.train()
    started = time.perf_counter()
    curve: list[dict] = []
    step = 0
    running = 0.0

    def progress_now() -> float:
        return schedule.progress(step, time.perf_counter() - started)

    stop_reason = None
    while stop_reason is None:
        order = torch.randperm(count, generator=generator)
        for start in range(0, steps_per_epoch * batch_size, batch_size):
            fraction = progress_now()
            stop_reason = _stop_reason(schedule, step, fraction, watch)
            if stop_reason is not None:
                break
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled("canceled during training")
            index = order[start : start + batch_size]
            factor = (
                _learning_rate_factor(fraction, options.warmup_fraction)
                if watch is None
                else watch.learning_rate_factor(step, fraction, options.warmup_fraction)
            )
            for group in optimiser.param_groups:
                group["lr"] = learning_rate * factor
            loss, terms = _training_step(net, features, labels, index, options, generator, optimiser, anchor)
            with torch.no_grad():
                for parameter, rows in kept_rows:
                    parameter[: rows.shape[0]] = rows
            step += 1
            running = 0.9 * running + 0.1 * loss if step > 1 else loss
            if watch is not None and watch.due(step):
                watch.measure(net, step, time.perf_counter() - started)
            if step % steps_per_epoch == 0:
                curve.append(_curve_point(step, time.perf_counter() - started, running, terms))
                if progress is not None:
                    low, high = progress_span
                    progress(
                        low + (high - low) * progress_now(),
                        "training",
                        {"loss": running, "step": step, "steps": max_steps},
                    )
    net.for_inference()
    return {
        "steps": step,
        "seconds": round(time.perf_counter() - started, 2),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "curve": curve,
        "stop_reason": stop_reason,
        "convergence": watch.summary() if watch is not None else None,
    }


StopReason = Literal["converged", "budget", "steps"]


def _stop_reason(
    schedule: _Schedule, step: int, fraction: float, watch: ConvergenceWatch | None
) -> StopReason | None:
    """Why the loop ends before this step, or None to go on: the object converged (and annealed),
    the time budget is spent, or the step cap is reached."""
    if watch is not None and watch.finished(step):
        return "converged"
    if fraction < 1.0:
        return None
    return "steps" if schedule.max_steps is not None and step >= schedule.max_steps else "budget"


def _curve_point(step: int, seconds: float, running_loss: float, terms: dict[str, torch.Tensor]) -> dict:
    """One point of the manifest's loss curve: at the end of an epoch, with each loss term."""
    return {
        "step": step,
        "seconds": round(seconds, 2),
        "loss": round(running_loss, 5),
        **{k: round(float(v), 5) for k, v in terms.items() if k != "total"},
    }


def _training_step(
    net: IUMADNet,
    features: FeatureSet,
    labels: torch.Tensor,
    index: torch.Tensor,
    options: TrainingOptions,
    generator: torch.Generator,
    optimiser: torch.optim.Optimizer,
    anchor: dict[str, torch.Tensor] | None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimiser step on the batch `index` (depth dropped from some samples so the missing-depth
    path trains); returns the loss and its terms."""
    has_depth = features.has_depth[index].clone()
    if options.depth_dropout > 0:
        drop = torch.rand(len(index), generator=generator) < options.depth_dropout
        has_depth &= ~drop
    outputs = net(
        features.rgb[index],
        features.depth[index],
        torch.ones_like(has_depth),
        has_depth,
        jitter=True,
        objects=labels[index],
    )
    terms = iumad_losses(outputs, labels[index])
    loss = terms["total"]
    if anchor is not None and options.anchor_weight > 0:
        loss = loss + options.anchor_weight * _anchor_penalty(net, anchor)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimiser.step()
    # The terms stay tensors: read once an epoch (a float() per term and step would sync a GPU).
    return float(loss.detach()), {k: v.detach() for k, v in terms.items()}
