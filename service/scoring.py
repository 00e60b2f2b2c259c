"""From a raw score to a decision: which threshold applies, and the 0.5-centred decision score.

Raw scores are z-score-like (maxima of maps normalised by normal-part statistics) and can be negative,
so a ratio like `raw / threshold` would be meaningless. The decision score is instead linear
(`SCORE_FORMULA`, which the API documentation quotes): the spread is at least `MIN_SPREAD` raw-score
units, so a holdout of one or two parts, whose max and median coincide, cannot blow scores up to
+-1e6 (1 for an object without a calibration summary). It is strictly increasing in the raw score and
never clipped, so rankings survive, and it is 0.5 exactly at the threshold in force.
"""

from __future__ import annotations

from typing import Literal

from model.checkpoint import ObjectRecord
from model.errors import ConflictError

MIN_SPREAD = 0.5
SCORE_FORMULA = "0.5 + (raw_score - threshold) / (2 * spread)"
SPREAD_RULE = (
    f"the object's calibration `score_max - score_median` on held-out normal parts (at least {MIN_SPREAD})"
)

ThresholdSource = Literal["request", "operator", "calibrated"]


def score_spread(record: ObjectRecord) -> float:
    calibration = record.calibration or {}
    try:
        spread = float(calibration["score_max"]) - float(calibration["score_median"])
    except (KeyError, TypeError, ValueError):
        return 1.0
    return max(spread, MIN_SPREAD)


def decision_score(raw_score: float, threshold: float, spread: float) -> float:
    return 0.5 + (raw_score - threshold) / (2.0 * spread)


def threshold_in_force(
    record: ObjectRecord, override: float | None, requested: float | None = None
) -> tuple[float, ThresholdSource]:
    """The request's threshold, else the operator's override, else the calibrated one."""
    if requested is not None:
        return float(requested), "request"
    if override is not None:
        return float(override), "operator"
    if record.threshold is None:
        raise ConflictError(
            f"object {record.name!r} has no calibrated threshold; set one with "
            f"PATCH /objects/{record.name} or pass `threshold` with the request"
        )
    return float(record.threshold), "calibrated"
