"""The documented wire formats (RLE, PNG masks, 16-bit maps), the score mapping and the decision log."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from model.checkpoint import ObjectRecord
from service.decision_log import DecisionLog, DecisionRecord
from service.masks import (
    decode_anomaly_map,
    decode_mask_png,
    decode_mask_rle,
    encode_anomaly_map,
    encode_mask_png,
    encode_mask_rle,
)
from service.scoring import decision_score, score_spread, threshold_in_force


def test_rle_is_row_major_runs_starting_with_zeros():
    mask = np.array([[1, 1, 0], [0, 1, 1]], dtype=bool)
    assert encode_mask_rle(mask) == {"size": [2, 3], "counts": [0, 2, 2, 2]}
    assert encode_mask_rle(np.zeros((2, 2), bool)) == {"size": [2, 2], "counts": [4]}
    assert encode_mask_rle(np.ones((1, 3), bool)) == {"size": [1, 3], "counts": [0, 3]}


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (80, 96)])
def test_masks_round_trip_through_rle_and_png(shape):
    mask = np.random.default_rng(0).random(shape) > 0.6
    np.testing.assert_array_equal(decode_mask_rle(encode_mask_rle(mask)), mask)
    np.testing.assert_array_equal(decode_mask_png(encode_mask_png(mask)), mask)


def test_the_anomaly_map_is_quantised_to_16_bits_and_nothing_more():
    values = np.random.default_rng(1).normal(size=(40, 50)) * 3 - 1  # negative values too
    encoded = encode_anomaly_map(values)
    decoded = decode_anomaly_map(encoded)
    assert encoded["min"] == values.min() and encoded["max"] == values.max()
    assert np.abs(decoded - values).max() <= (values.max() - values.min()) / 65535 / 2 + 1e-12
    flat = encode_anomaly_map(np.full((3, 3), 2.5))
    np.testing.assert_array_equal(decode_anomaly_map(flat), np.full((3, 3), 2.5))


def record(threshold: float | None = 1.0, calibration: dict | None = None) -> ObjectRecord:
    calibration = {"score_median": 0.2, "score_max": 1.0} if calibration is None else calibration
    return ObjectRecord(
        name="alpha", label=0, modalities=["rgb"], threshold=threshold, calibration=calibration
    )


def test_the_score_is_half_at_the_threshold_linear_and_never_saturates():
    spread = score_spread(record())
    assert spread == pytest.approx(0.8)
    assert decision_score(1.0, 1.0, spread) == 0.5
    assert decision_score(0.2, 1.0, spread) == pytest.approx(0.0)  # the median normal part
    raws = np.array([-1e6, -50.0, -1.0, 0.0, 0.99, 1.0, 1.01, 50.0, 1e6, 1e6 + 1])
    scores = [decision_score(raw, 1.0, spread) for raw in raws]
    assert all(
        later > earlier for earlier, later in zip(scores, scores[1:], strict=False)
    )  # rankings survive


def test_a_degenerate_or_missing_calibration_still_gives_a_strictly_increasing_score():
    assert score_spread(record(calibration={"score_median": 1.0, "score_max": 1.0})) == 0.5
    assert score_spread(record(calibration={})) == 1.0


def test_threshold_precedence_request_then_operator_then_calibrated():
    assert threshold_in_force(record(), override=0.7, requested=0.3) == (0.3, "request")
    assert threshold_in_force(record(), override=0.7) == (0.7, "operator")
    assert threshold_in_force(record(), override=None) == (1.0, "calibrated")


def decision(request_id: str, day: str = "2026-11-28", result: str = "fail") -> DecisionRecord:
    return DecisionRecord(
        request_id=request_id,
        time=f"{day}T10:00:00.000+00:00",
        object="alpha",
        object_source="given",
        model_version="v1",
        score=0.7,
        raw_score=1.2,
        threshold=1.0,
        decision=result,
        latency_ms=12.5,
    )


def test_the_decision_log_appends_one_line_per_decision_in_a_file_per_day(tmp_path):
    log = DecisionLog(tmp_path / "decisions")
    log.start()
    log.record(decision("a", "2026-11-28"))
    log.record(decision("b", "2026-11-29", "pass"))
    log.close()
    first = json.loads((tmp_path / "decisions" / "decisions-2026-11-28.jsonl").read_text())
    assert first["request_id"] == "a" and first["decision"] == "fail" and "kept_images" not in first
    assert (
        json.loads((tmp_path / "decisions" / "decisions-2026-11-29.jsonl").read_text())["request_id"] == "b"
    )


def test_rejected_images_are_kept_as_sent_and_pruned_by_size_and_age(tmp_path):
    rejected = tmp_path / "rejected"
    old = rejected / "2026-01-01" / "ancient_rgb.png"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    os.utime(old, (time.time() - 40 * 86400,) * 2)
    log = DecisionLog(
        tmp_path / "decisions", rejected, rejected_max_bytes=2500, rejected_max_age_s=30 * 86400
    )
    log.start()
    png = b"\x89PNG\r\n\x1a\n" + bytes(992)  # 1000 bytes
    for index in range(4):
        log.record(decision(f"part{index}"), {"rgb": png})
    log.record(decision("passed", result="pass"), {"rgb": png})  # a passing part is never kept
    log.close()
    kept = sorted(path.name for path in rejected.rglob("*") if path.is_file())
    assert not old.exists()  # older than the age limit
    assert kept == ["part2_rgb.png", "part3_rgb.png"]  # the newest that fit under 2500 bytes
    lines = (tmp_path / "decisions" / "decisions-2026-11-28.jsonl").read_text().splitlines()
    assert json.loads(lines[3])["kept_images"] == ["2026-11-28/part3_rgb.png"]


def test_the_decision_log_is_split_into_parts_and_kept_within_its_size_and_age(tmp_path):
    folder = tmp_path / "decisions"
    folder.mkdir()
    ancient = folder / "decisions-2025-01-01.jsonl"
    ancient.write_text("{}\n")
    os.utime(ancient, (time.time() - 400 * 86400,) * 2)
    log = DecisionLog(folder, log_max_bytes=200_000, log_max_age_s=365 * 86400)
    log.start()
    for index in range(3000):  # about 700 kB of lines
        log.record(decision(f"part-{index:05d}", "2026-11-28", "pass"))
    log.close()
    parts = sorted(folder.glob("decisions-*.jsonl"))
    assert not ancient.exists()
    assert len(parts) >= 2 and all(path.stat().st_size <= log.part_bytes + 1000 for path in parts)
    assert sum(path.stat().st_size for path in parts) <= 200_000 + log.part_bytes
    newest = max(parts, key=lambda path: path.stat().st_mtime).read_text().splitlines()
    assert json.loads(newest[-1])["request_id"] == "part-02999"  # the newest lines are the ones kept
