"""Per-object calibration on held-out normal samples that training never saw.

Two things per object: the statistics that normalise each modality's reconstruction error (so the
anomaly map is comparable across modalities), and the score threshold that makes the false-reject
rate on normal parts the requested target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from model.errors import InputError
from model.network.anomaly_map import anomaly_maps, for_each, modality_score_statistics


def error_statistics(errors: torch.Tensor, weights: torch.Tensor) -> tuple[list[float], list[float]]:
    """errors (N, 2, h, w) of normal samples, token weights (N, 2, h, w) -> per-modality weighted mean
    and std of token errors (tokens without a measurement do not count)."""
    means, stds = [], []
    for modality in range(errors.shape[1]):
        weight = weights[:, modality].double().flatten()
        if float(weight.sum()) <= 0:
            means.append(0.0)
            stds.append(1.0)
            continue
        values = errors[:, modality].double().flatten()
        mean = float((values * weight).sum() / weight.sum())
        variance = float((weight * (values - mean) ** 2).sum() / weight.sum())
        means.append(mean)
        stds.append(max(variance**0.5, 1e-6))
    return means, stds


def threshold_for_false_reject_rate(scores: np.ndarray, target: float) -> float:
    """The smallest threshold that rejects at most `target` of these normal scores (score > threshold).

    With n samples only multiples of 1/n are observable: fewer than 1/target samples means the
    threshold is the highest normal score seen (false-reject estimate 0 on this holdout).
    """
    if scores.size == 0:
        raise ValueError("no held-out scores to calibrate on")
    ordered = np.sort(scores.astype(np.float64))
    allowed = math.floor(target * ordered.size)  # how many normals may sit above the threshold
    return float(ordered[ordered.size - 1 - allowed])


def _refuse_degenerate(scores: np.ndarray) -> None:
    """A threshold is never set from scores that do not vary: with two held-out pairs, each
    standardised by the statistics of both, both score exactly 1/sqrt(2) whatever the parts look like."""
    if scores.size >= 2 and float(np.ptp(scores)) <= 1e-6 * max(1.0, float(np.abs(scores).max())):
        raise InputError(
            f"the {scores.size} held-out normal pairs all score {float(scores[0]):.6g}: no threshold can "
            "be set from them; enrol with more normal pairs (IUMAD_MIN_HOLDOUT_SAMPLES held out)"
        )


@dataclass(frozen=True)
class ObjectCalibration:
    """One object's calibration: what the manifest's object record keeps (model/checkpoint.py)."""

    norm_mean: list[float]  # per modality: the mean token error of normal parts
    norm_std: list[float]  # ... and its spread
    score_mean: list[float]  # per modality: the mean image score of normal parts, after normalising
    score_std: list[float]  # ... and its spread
    threshold: float  # on the fused raw score: rejects `target_false_reject_rate` of these normals
    summary: dict[str, float]  # the calibration scores: samples, min, median, max, target


def calibrate_object(
    errors: torch.Tensor,
    weights: torch.Tensor,
    image_size: int,
    smoothing_sigma: float,
    score_pool: int,
    target_false_reject_rate: float,
) -> ObjectCalibration:
    """Normalisation statistics and the threshold for one object, from its normal parts' error maps
    (the threshold on the same fused score that inspection computes)."""
    mean, std = error_statistics(errors, weights)
    score_mean, score_std = modality_score_statistics(
        errors, weights, mean, std, image_size, smoothing_sigma, score_pool
    )
    count = errors.shape[0]
    _, scores = anomaly_maps(
        errors,
        weights,
        for_each(mean, count, errors.dtype),
        for_each(std, count, errors.dtype),
        image_size,
        smoothing_sigma,
        score_pool,
        for_each(score_mean, count, errors.dtype),
        for_each(score_std, count, errors.dtype),
    )
    scores_np = scores.numpy()
    _refuse_degenerate(scores_np)
    threshold = threshold_for_false_reject_rate(scores_np, target_false_reject_rate)
    return ObjectCalibration(
        norm_mean=mean,
        norm_std=std,
        score_mean=score_mean,
        score_std=score_std,
        threshold=threshold,
        summary={
            "samples": int(count),
            "score_min": float(scores_np.min()),
            "score_median": float(np.median(scores_np)),
            "score_max": float(scores_np.max()),
            "target_false_reject_rate": target_false_reject_rate,
        },
    )
