"""The one definition of every reported metric: I-AUROC, P-AUROC, AUPRO (MVTec) and the Forgetting Measure.

All values are fractions in [0, 1] (the report layer turns them into percent). An AUROC is never
flipped: a detector that ranks anomalies below normal items scores below 0.5 and must be seen doing
so. Bad input (one class only, empty, mismatched shapes, NaN scores) raises `MetricError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

from model.errors import InputError

# 8-connectivity for ground-truth regions, as in the MVTec AD / 3D-AD evaluation code.
COMPONENT_STRUCTURE = np.ones((3, 3), dtype=bool)


class MetricError(InputError, ValueError):
    """A metric that is undefined for the given input (e.g. a test set with only normal images)."""


def _finite_scores(values, what: str) -> np.ndarray:
    """float32 stays float32 (sorting it is twice as fast); everything else becomes float64."""
    array = np.asarray(values)
    if array.dtype != np.float32:
        array = array.astype(np.float64)
    if array.size == 0:
        raise MetricError(f"{what} is empty")
    if not np.isfinite(array).all():
        raise MetricError(f"{what} contains NaN or infinite values")
    return array


def _binary(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        raise MetricError(f"{what} is empty")
    if array.dtype != bool:
        if not np.isin(array, (0, 1)).all():
            raise MetricError(f"{what} must be binary (0/1 or bool)")
        array = array.astype(bool)
    return array


def _auroc(positive: np.ndarray, negative: np.ndarray, what: str) -> float:
    """Mann-Whitney form: P(positive scores above a negative) + 0.5 P(tie), counted exactly with sorts."""
    if positive.size == 0 or negative.size == 0:
        present = "anomalous" if positive.size else "normal"
        raise MetricError(f"{what} needs both normal and anomalous items; only {present} ones were given")
    negative = np.sort(negative)
    positive = np.sort(positive)
    below = np.searchsorted(negative, positive, side="left").sum(dtype=np.int64)
    not_above = np.searchsorted(negative, positive, side="right").sum(dtype=np.int64)
    return float((below + not_above) / (2.0 * positive.size * negative.size))


def image_auroc(labels, scores) -> float:
    """Image-level AUROC. labels: (N,) 1 = anomalous; scores: (N,) higher = more anomalous."""
    labels = _binary(labels, "image labels").ravel()
    scores = _finite_scores(scores, "image scores").ravel()
    if labels.shape != scores.shape:
        raise MetricError(f"{labels.size} image labels but {scores.size} scores")
    return _auroc(scores[labels], scores[~labels], "image AUROC")


def _masks_and_maps(masks, maps) -> tuple[np.ndarray, np.ndarray]:
    masks = _binary(masks, "ground-truth masks")
    maps = _finite_scores(maps, "anomaly maps")
    if masks.shape != maps.shape:
        raise MetricError(f"ground-truth masks have shape {masks.shape} but anomaly maps {maps.shape}")
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3:
        raise MetricError(f"expected masks and maps of shape (N, H, W), got {masks.shape}")
    return masks, maps


def pixel_auroc(masks, maps) -> float:
    """Pixel-level AUROC over all pixels of all images. masks: (N, H, W) bool; maps: (N, H, W)."""
    masks, maps = _masks_and_maps(masks, maps)
    return _auroc(maps[masks], maps[~masks], "pixel AUROC")


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Per anomalous pixel (in `masks[masks]` order): 1 / (|its region| * #regions), so the weights of
    one region sum to 1/#regions and all weights sum to 1."""
    region_ids = np.zeros(masks.shape, dtype=np.int64)
    regions = 0
    for index in range(masks.shape[0]):
        labelled, count = ndimage.label(masks[index], structure=COMPONENT_STRUCTURE)
        region_ids[index][labelled > 0] = labelled[labelled > 0] + regions
        regions += count
    if regions == 0:
        raise MetricError("AUPRO needs anomalous pixels; the ground truth has none")
    ids = region_ids[masks]
    return 1.0 / (np.bincount(ids)[ids] * regions)


def aupro(masks, maps, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve for FPR in [0, fpr_limit], divided by fpr_limit (MVTec AD definition).

    PRO(t) is the mean over every connected ground-truth region (8-connected, of all images) of the
    fraction of that region scoring >= t; FPR(t) is the fraction of all normal pixels (of all images)
    scoring >= t. The curve is piecewise linear through the points of every distinct threshold and is
    integrated exactly, interpolating at fpr_limit. Two sorts replace the threshold loop: the area
    only grows where the FPR moves, i.e. at each distinct normal score u, over the segment from
    (FPR before u, PRO of scores > u) to (FPR after u, PRO of scores >= u), a diagonal when
    anomalous pixels tie with u.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise MetricError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    masks, maps = _masks_and_maps(masks, maps)
    weights = _region_weights(masks)
    normal = np.sort(maps[~masks])[::-1]  # descending
    if normal.size == 0:
        raise MetricError("AUPRO needs normal pixels; every ground-truth pixel is anomalous")
    anomalous = maps[masks]
    order = np.argsort(anomalous)
    anomalous = anomalous[order]
    cumulative = np.r_[0.0, np.cumsum(weights[order])]

    # Only thresholds up to the one whose tie group crosses fpr_limit matter.
    crossing = normal[min(int(np.ceil(fpr_limit * normal.size)), normal.size) - 1]
    considered = normal[: int(np.count_nonzero(normal >= crossing))]
    group_end = np.r_[np.flatnonzero(considered[1:] != considered[:-1]), considered.size - 1]
    thresholds = considered[group_end]
    fpr_after = (group_end + 1) / normal.size
    fpr_before = np.r_[0.0, fpr_after[:-1]]
    pro_above = cumulative[-1] - cumulative[np.searchsorted(anomalous, thresholds, side="right")]
    pro_at_or_above = cumulative[-1] - cumulative[np.searchsorted(anomalous, thresholds, side="left")]

    last = int(np.searchsorted(fpr_after, fpr_limit, side="left"))  # segment that reaches the limit
    full = slice(0, last)
    area = np.sum((fpr_after[full] - fpr_before[full]) * (pro_above[full] + pro_at_or_above[full]) / 2.0)
    if last < thresholds.size:
        width = fpr_after[last] - fpr_before[last]
        fraction = (fpr_limit - fpr_before[last]) / width
        pro_limit = pro_above[last] + fraction * (pro_at_or_above[last] - pro_above[last])
        area += (fpr_limit - fpr_before[last]) * (pro_above[last] + pro_limit) / 2.0
    return float(min(area / fpr_limit, 1.0))


def forgetting_measure(
    matrix: Sequence[Mapping[str, float]] | np.ndarray,
    learned_at: Mapping[str, int] | Mapping[int, int] | None = None,
) -> float:
    """FM = mean_j [max_{learned_at[j] <= l < K} a(l, j) - a(K, j)] over objects j learned before K.

    matrix: one entry per step l = 0..K (K = the final step), each a mapping object -> metric after
      that step; objects not yet learned are absent or NaN. A 2-D array (steps, objects) with NaN
      for not-yet-learned works too, with learned_at keyed by column index.
    learned_at: object -> step at which it was learned; default: its first step with a value.
    Positive = forgotten, negative = old objects improved (backward transfer); never clipped.
    A NaN or missing value between learning and K is skipped in the max; a missing final value
    a(K, j), or fewer than two steps, is a MetricError.
    """
    if isinstance(matrix, np.ndarray):
        if matrix.ndim != 2:
            raise MetricError(f"forgetting matrix must be (steps, objects), got shape {matrix.shape}")
        steps: list[Mapping] = [{column: float(value) for column, value in enumerate(row)} for row in matrix]
    else:
        steps = list(matrix)
    if len(steps) < 2:
        raise MetricError("the Forgetting Measure needs at least two steps")
    final = len(steps) - 1

    def value(step: int, key) -> float:
        found = steps[step].get(key)
        return float("nan") if found is None else float(found)

    if learned_at is None:
        keys = {key for row in steps for key in row}
        learned_at = {
            key: min(s for s in range(len(steps)) if np.isfinite(value(s, key)))
            for key in keys
            if any(np.isfinite(value(s, key)) for s in range(len(steps)))
        }
    drops = []
    for key, learned in learned_at.items():
        if learned >= final:
            continue
        last = value(final, key)
        if not np.isfinite(last):
            raise MetricError(
                f"object {key!r} was learned at step {learned} but has no value at the final step"
            )
        earlier = [value(step, key) for step in range(learned, final)]
        earlier = [v for v in earlier if np.isfinite(v)]
        if not earlier:
            raise MetricError(f"object {key!r} has no value between step {learned} and the final step")
        drops.append(max(earlier) - last)
    if not drops:
        raise MetricError("no object was learned before the final step")
    return float(np.mean(drops))
