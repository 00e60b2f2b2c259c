"""Metrics against hand-computed values and brute-force references, ties and edge cases included."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from model.errors import InputError
from model.evaluation.metrics import MetricError, aupro, forgetting_measure, image_auroc, pixel_auroc

# ------------------------------------------------------------------------------ brute-force references


def auroc_by_pairs(labels, scores) -> float:
    labels, scores = np.asarray(labels, bool), np.asarray(scores, float)
    credit = [
        1.0 if p > n else 0.5 if p == n else 0.0
        for p, n in itertools.product(scores[labels], scores[~labels])
    ]
    return float(np.mean(credit))


def aupro_by_thresholds(masks, maps, fpr_limit) -> float:
    """Loop over every distinct threshold, regions found per image, trapezoids summed one by one."""
    masks, maps = np.asarray(masks, bool), np.asarray(maps, float)
    regions = []
    for mask in masks:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [labelled == k for k in range(1, count + 1)]
    image_of_region = []
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        image_of_region += [index] * count
    points = [(0.0, 0.0)]
    for threshold in sorted(set(maps.ravel().tolist()), reverse=True):
        above = maps >= threshold
        fpr = (above & ~masks).sum() / (~masks).sum()
        pro = np.mean(
            [(above[image][region]).mean() for image, region in zip(image_of_region, regions, strict=True)]
        )
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


# ------------------------------------------------------------------------------------- image AUROC


def test_image_auroc_hand_computed():
    # positive 0.35 beats 0.1, loses to 0.4; positive 0.8 beats both: 3 of 4 pairs
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75


def test_image_auroc_ties_earn_half_credit():
    # pairs: (0.5 vs 0.5) tie 0.5, (0.5 vs 0.2) 1, (0.9 vs 0.5) 1, (0.9 vs 0.2) 1 -> 3.5 / 4
    assert image_auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 0.875
    assert image_auroc([0, 1, 1, 0, 1], [3.0] * 5) == 0.5


def test_image_auroc_is_never_flipped():
    assert image_auroc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert image_auroc([True, False], [0.0, 1.0]) == 0.0


def test_image_auroc_matches_pairwise_reference_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(30):
        labels = rng.integers(0, 2, 25)
        labels[:2] = (0, 1)
        scores = rng.integers(0, 4, 25).astype(float)  # heavy ties
        assert image_auroc(labels, scores) == pytest.approx(auroc_by_pairs(labels, scores), abs=1e-15)


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only anomalous"),
        ([0, 0], [0.1, 0.2], "only normal"),
        ([], [], "empty"),
        ([0, 1], [0.1, 0.2, 0.3], "3 scores"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 2], [0.1, 0.2], "binary"),
    ],
)
def test_image_auroc_bad_input(labels, scores, message):
    with pytest.raises(MetricError, match=message):
        image_auroc(labels, scores)


def test_metric_error_is_an_input_error_and_a_value_error():
    assert issubclass(MetricError, InputError) and issubclass(MetricError, ValueError)


# ------------------------------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_hand_computed():
    masks = np.array([[[1, 0, 0], [0, 0, 1]]], bool)
    maps = np.array([[[0.9, 0.1, 0.9], [0.2, 0.3, 0.5]]])
    # positive 0.9: beats 0.1, 0.2, 0.3, ties 0.9 -> 3.5; positive 0.5: beats 0.1, 0.2, 0.3 -> 3; / 8
    assert pixel_auroc(masks, maps) == 0.8125


def test_pixel_auroc_matches_reference_and_accepts_float32():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 6, 5)) < 0.3
    maps = rng.integers(0, 5, (3, 6, 5)).astype(np.float32)
    expected = auroc_by_pairs(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-15)


def test_pixel_metrics_bad_input():
    with pytest.raises(MetricError, match="shape"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    with pytest.raises(MetricError, match="only normal"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(MetricError, match="anomalous pixels"):
        aupro(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(MetricError, match="normal pixels"):
        aupro(np.ones((1, 2, 2), bool), np.zeros((1, 2, 2)))
    with pytest.raises(MetricError, match="NaN"):
        aupro(np.eye(3, dtype=bool)[None], np.full((1, 3, 3), np.nan))
    with pytest.raises(MetricError, match="fpr_limit"):
        aupro(np.eye(3, dtype=bool)[None], np.zeros((1, 3, 3)), fpr_limit=0.0)


# ------------------------------------------------------------------------------------------- AUPRO


ONE_REGION = np.array([[[1, 1, 0], [0, 0, 0]]], bool)  # one region of 2 pixels, 4 normal pixels


def test_aupro_hand_computed_single_region():
    maps = np.array([[[0.9, 0.3, 0.8], [0.1, 0.2, 0.4]]])
    # curve: (0,0) (0,.5) (.25,.5) (.5,.5) (.5,1) (.75,1) (1,1)
    assert aupro(ONE_REGION, maps, fpr_limit=0.3) == pytest.approx(0.5, abs=1e-15)  # 0.3*0.5 / 0.3
    assert aupro(ONE_REGION, maps, fpr_limit=1.0) == pytest.approx(0.75, abs=1e-15)  # .25 + .5
    assert aupro(ONE_REGION, maps, fpr_limit=0.6) == pytest.approx(0.35 / 0.6, abs=1e-15)  # .25 + .1


def test_aupro_ties_between_normal_and_anomalous_pixels_are_diagonal():
    maps = np.array([[[0.8, 0.3, 0.8], [0.1, 0.2, 0.4]]])
    # threshold 0.8 adds a normal and an anomalous pixel at once: (0,0) -> (.25,.5) is one segment
    assert aupro(ONE_REGION, maps, fpr_limit=0.3) == pytest.approx((0.0625 + 0.025) / 0.3, abs=1e-15)
    # the limit falls inside the diagonal: PRO(0.1) = 0.2, triangle area 0.01
    assert aupro(ONE_REGION, maps, fpr_limit=0.1) == pytest.approx(0.1, abs=1e-15)


def test_aupro_weights_every_region_equally_across_images():
    masks = np.array([[[1, 0], [0, 0]], [[0, 1], [1, 1]]], bool)  # a 1-pixel and a 3-pixel region
    maps = np.array([[[0.7, 0.2], [0.1, 0.0]], [[0.6, 0.9], [0.3, 0.05]]])
    # (0,0) (0,1/6) (0,2/3) (.25,2/3) (.25,5/6) (.5,5/6) (.75,5/6) (.75,1) (1,1)
    assert aupro(masks, maps) == pytest.approx(25 / 36, abs=1e-15)  # (.25*2/3 + .05*5/6) / .3
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(5 / 6, abs=1e-15)


def test_aupro_regions_are_eight_connected():
    masks = np.zeros((1, 3, 3), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = True  # one region diagonally, two if 4-connected
    maps = np.full((1, 3, 3), 0.5)
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 1, 2] = 0.9, 0.1, 0.1
    assert aupro(masks, maps, fpr_limit=1.0) == pytest.approx(1 / 3, abs=1e-15)  # 4-connected: 1/2


def test_aupro_perfect_constant_and_inverted_maps():
    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:4, 2:5] = True
    masks[1, 6:, :2] = True
    assert aupro(masks, masks.astype(float)) == 1.0
    assert aupro(masks, np.zeros((2, 8, 8))) == pytest.approx(0.15, abs=1e-15)  # diagonal to (1,1)
    assert aupro(masks, 1.0 - masks) == 0.0


def test_aupro_matches_threshold_loop_reference():
    rng = np.random.default_rng(2)
    for _ in range(15):
        masks = np.zeros((3, 7, 6), bool)
        for image in range(3):
            masks[image] = ndimage.binary_dilation(rng.random((7, 6)) < 0.08)
        masks[0, 0, 0] = True
        maps = (rng.integers(0, 6, (3, 7, 6)) + masks * rng.integers(0, 3, (3, 7, 6))).astype(float)
        for limit in (0.05, 0.3, 1.0):
            expected = aupro_by_thresholds(masks, maps, limit)
            assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)


def test_aupro_is_fast_on_a_realistic_test_set():
    import time

    rng = np.random.default_rng(3)
    masks = np.zeros((100, 224, 224), bool)
    masks[::2, 50:80, 60:100] = True
    maps = rng.random((100, 224, 224)).astype(np.float32) + masks * 0.5
    start = time.perf_counter()
    aupro(masks, maps)
    assert time.perf_counter() - start < 5.0  # ~0.5 s on one core; generous for shared CI machines


# ------------------------------------------------------------------------------ Forgetting Measure


def test_forgetting_measure_hand_computed():
    matrix = [{"a": 0.9}, {"a": 0.8, "b": 0.7}, {"a": 0.85, "b": 0.6, "c": 0.9}]
    # a: max(.9, .8) - .85 = .05 ; b: .7 - .6 = .1 ; c learned at the final step: not counted
    assert forgetting_measure(matrix, {"a": 0, "b": 1, "c": 2}) == pytest.approx(0.075, abs=1e-15)
    assert forgetting_measure(matrix) == pytest.approx(0.075, abs=1e-15)  # learned_at inferred


def test_forgetting_measure_from_array_with_nan_for_unlearned():
    matrix = np.array([[0.9, np.nan, np.nan], [0.8, 0.7, np.nan], [0.85, 0.6, 0.9]])
    assert forgetting_measure(matrix) == pytest.approx(0.075, abs=1e-15)
    assert forgetting_measure(matrix, {0: 0, 1: 1, 2: 2}) == pytest.approx(0.075, abs=1e-15)


def test_forgetting_measure_can_be_negative_and_skips_missing_middle_values():
    assert forgetting_measure([{"a": 0.7}, {"a": 0.9}]) == pytest.approx(-0.2, abs=1e-15)
    matrix = [{"a": 0.9}, {"a": float("nan")}, {"a": 0.8}]
    assert forgetting_measure(matrix, {"a": 0}) == pytest.approx(0.1, abs=1e-15)


def test_forgetting_measure_bad_input():
    with pytest.raises(MetricError, match="two steps"):
        forgetting_measure([{"a": 0.9}])
    with pytest.raises(MetricError, match="final step"):
        forgetting_measure([{"a": 0.9}, {"b": 0.8}], {"a": 0, "b": 1})
    with pytest.raises(MetricError, match="no object was learned before"):
        forgetting_measure([{}, {"b": 0.8}], {"b": 1})
