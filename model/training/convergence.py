"""When a training step has learned its object: the held-out normals' reconstruction error stops falling.

A training loss always falls (on 16 pairs it falls by memorising them). What predicts detection on
parts the network never saw is how well it reconstructs normal parts it did not train on: on the
real cable_gland this error and the test I-AUROC moved together over 900 steps (docs/BENCHMARKS.md,
"Enrolment time"). Every `interval_steps` the watch measures the mean per-cell error of the held-out
normals (the calibration holdout: measured, never trained on). Once it has not improved by
`min_delta` (relative) for `patience` measurements, after at least `min_steps`, training has
converged: the learning rate then anneals to zero over a short tail and the loop ends. The schedule
is warm-up, constant, decay (warmup-stable-decay), so a run can end whenever its object is learned;
the budget still bounds it (the decay then starts at `budget_tail` of the budget).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from model.network.anomaly_map import modality_weights
from model.network.iumad import IUMADNet


@dataclass(frozen=True)
class ConvergenceRule:
    interval_steps: int = 25
    patience: int = 4
    min_steps: int = 100
    min_delta: float = 0.01  # an improvement counts when the error falls by at least 1 % of the best
    anneal_fraction: float = 0.15  # the decay after convergence: this share of the steps so far
    min_anneal_steps: int = 25
    budget_tail: float = 0.2  # without convergence, the decay takes the budget's last 20 %


@dataclass(frozen=True)
class ValidationPoint:
    step: int
    seconds: float
    error: float


@dataclass
class ConvergenceWatch:
    """The held-out normals of the objects a step trains, and what their error did."""

    rule: ConvergenceRule
    rgb: torch.Tensor
    depth: torch.Tensor
    has_depth: torch.Tensor
    depth_valid: torch.Tensor
    labels: torch.Tensor
    curve: list[ValidationPoint] = field(default_factory=list)
    converged_at: int | None = None
    _best: float = math.inf
    _since_best: int = 0

    def due(self, step: int) -> bool:
        return self.converged_at is None and step % self.rule.interval_steps == 0

    def measure(self, net: IUMADNet, step: int, seconds: float) -> float:
        """The held-out error now; marks convergence when it has stopped improving."""
        error = held_out_error(net, self.rgb, self.depth, self.has_depth, self.depth_valid, self.labels)
        self.curve.append(ValidationPoint(step, round(seconds, 2), round(error, 6)))
        if error < self._best * (1.0 - self.rule.min_delta):
            self._best, self._since_best = error, 0
        else:
            self._since_best += 1
        if step >= self.rule.min_steps and self._since_best >= self.rule.patience:
            self.converged_at = step
        return error

    def anneal_steps(self) -> int:
        assert self.converged_at is not None
        return max(self.rule.min_anneal_steps, round(self.rule.anneal_fraction * self.converged_at))

    def finished(self, step: int) -> bool:
        """Converged and annealed: the loop may end."""
        return self.converged_at is not None and step >= self.converged_at + self.anneal_steps()

    def learning_rate_factor(self, step: int, progress: float, warmup: float) -> float:
        """Warm-up, constant, then a linear decay: after convergence, or over the budget's tail."""
        if progress < warmup:
            return max(progress / warmup, 0.01)
        factor = 1.0
        if progress > 1.0 - self.rule.budget_tail:
            factor = max(0.0, (1.0 - progress) / self.rule.budget_tail)
        if self.converged_at is not None:
            factor = min(factor, max(0.0, 1.0 - (step - self.converged_at) / self.anneal_steps()))
        return max(factor, 0.01) if factor > 0 else 0.0

    def summary(self) -> dict:
        return {
            "rule": asdict(self.rule),
            "converged_at_step": self.converged_at,
            "held_out_samples": int(self.labels.numel()),
            "curve": [asdict(point) for point in self.curve],
        }


def held_out_error(
    net: IUMADNet,
    rgb: torch.Tensor,
    depth: torch.Tensor,
    has_depth: torch.Tensor,
    depth_valid: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 32,
) -> float:
    """Mean per-cell reconstruction error of normal samples (no jitter), each reconstructed as its
    object, counting only measured cells of each modality."""
    was_training = net.training
    net.eval()
    total, weight = 0.0, 0.0
    with torch.inference_mode():
        for start in range(0, rgb.shape[0], batch_size):
            part = slice(start, start + batch_size)
            present = has_depth[part]
            errors, _ = net.error_maps(
                rgb[part], depth[part], torch.ones_like(present), present, labels[part]
            )
            weights = modality_weights(torch.ones_like(present), present, depth_valid[part])
            total += float((errors * weights).sum())
            weight += float(weights.sum())
    net.train(was_training)
    return total / max(weight, 1e-12)
