"""POST /inspect through an HTTP client: what a camera gets back, field by field."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from service_support import (
    HEIGHT,
    WIDTH,
    build_version,
    files_for,
    jpeg_bytes,
    npy_bytes,
    part,
    png_bytes,
    service_settings,
    tiff_bytes,
    wait_ready,
)

from model.data.batches import InspectionInput
from model.inference import InspectionModel
from model.network.anomaly_map import resize_map
from service.app import create_app
from service.masks import decode_anomaly_map, decode_mask_png, decode_mask_rle
from service.scoring import decision_score, score_spread


@pytest.fixture(scope="module")
def version_dir(tmp_path_factory):
    return build_version(tmp_path_factory.mktemp("data") / "models")


@pytest.fixture(scope="module")
def reference(version_dir) -> InspectionModel:
    """The same version, loaded in-process: what the gateway's answers must agree with."""
    return InspectionModel.load(version_dir)


@pytest.fixture(scope="module")
def client(version_dir):
    app = create_app(service_settings(version_dir.parent.parent))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def test_response_has_every_field_with_consistent_values(client, reference):
    rgb, depth = part("alpha", 7)
    response = client.post(
        "/inspect", files=files_for(rgb, depth), data={"object": "alpha", "mask": "png", "return_map": "true"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reference.predict([InspectionInput(rgb, depth, "alpha")])[0]
    record = reference.object("alpha")

    assert body["request_id"] == response.headers["X-Request-ID"] and body["request_id"]
    assert body["object"] == "alpha" and body["object_source"] == "given"
    assert body["object_confidence"] == pytest.approx(expected.object_confidence, abs=1e-5)
    assert body["raw_score"] == pytest.approx(expected.raw_score, abs=1e-5)
    assert body["threshold"] == pytest.approx(record.threshold) and body["threshold_source"] == "calibrated"
    assert body["score"] == pytest.approx(
        decision_score(body["raw_score"], body["threshold"], score_spread(record))
    )
    assert body["is_anomalous"] == (body["raw_score"] > body["threshold"]) == (body["score"] > 0.5)
    mask = decode_mask_png(body["mask"])
    assert body["mask_format"] == "png" and mask.shape == (HEIGHT, WIDTH)
    assert body["defect_area_fraction"] == pytest.approx(mask.mean())
    assert decode_anomaly_map(body["anomaly_map"]).shape == (HEIGHT, WIDTH)
    assert body["modalities"] == ["rgb", "depth"]
    assert body["model_version"] == reference.version
    timings = body["timings_ms"]
    assert set(timings) == {"decode", "read", "prepare", "queue", "infer", "post", "total"}
    assert all(value >= 0 for value in timings.values())
    assert timings["read"] + timings["prepare"] == pytest.approx(timings["decode"], abs=0.01)
    assert (
        timings["decode"] + timings["queue"] + timings["infer"] + timings["post"] <= timings["total"] + 0.01
    )
    assert body["warnings"] == []


def test_a_safe_client_request_id_is_kept_and_an_unsafe_one_replaced(client):
    rgb, _ = part("beta", 1)
    kept = client.post("/inspect", files=files_for(rgb), headers={"X-Request-ID": "cam7-000123"})
    assert kept.json()["request_id"] == kept.headers["X-Request-ID"] == "cam7-000123"
    replaced = client.post("/inspect", files=files_for(rgb), headers={"X-Request-ID": "../../etc/passwd"})
    assert replaced.json()["request_id"] == replaced.headers["X-Request-ID"] != "../../etc/passwd"


@pytest.mark.parametrize("kind", ["alpha", "beta"])
def test_the_label_classifier_chooses_the_object_when_none_is_given(client, reference, kind):
    rgb, depth = part(kind, 11)
    body = client.post("/inspect", files=files_for(rgb, depth), data={"mask": "none"}).json()
    expected = reference.predict([InspectionInput(rgb, depth)])[0]
    assert body["object_source"] == "predicted"
    assert body["object"] == expected.predicted_object
    assert body["object_confidence"] == pytest.approx(expected.predicted_confidence, abs=1e-5)
    assert body["raw_score"] == pytest.approx(expected.raw_score, abs=1e-5)


def test_a_request_threshold_overrides_the_stored_one_for_that_request_only(client):
    rgb, depth = part("alpha", 7)
    files = files_for(rgb, depth)
    normal = client.post("/inspect", files=files, data={"object": "alpha"}).json()
    strict = client.post(
        "/inspect", files=files, data={"object": "alpha", "threshold": normal["raw_score"] - 1}
    ).json()
    lenient = client.post(
        "/inspect", files=files, data={"object": "alpha", "threshold": normal["raw_score"] + 1}
    ).json()
    again = client.post("/inspect", files=files, data={"object": "alpha"}).json()

    assert strict["threshold_source"] == lenient["threshold_source"] == "request"
    assert strict["is_anomalous"] and strict["score"] > 0.5 and strict["defect_area_fraction"] > 0
    assert not lenient["is_anomalous"] and lenient["score"] < 0.5 and lenient["defect_area_fraction"] == 0
    assert decode_mask_png(lenient["mask"]).sum() == 0  # a passing part shows no defect
    assert again["threshold"] == normal["threshold"] and again["threshold_source"] == "calibrated"
    # One raw score, three thresholds: the score moves with the threshold, the raw score does not.
    assert strict["raw_score"] == pytest.approx(lenient["raw_score"]) == pytest.approx(normal["raw_score"])


def test_the_rle_mask_decodes_to_the_png_mask(client):
    rgb, depth = part("alpha", 5, defect=True)
    probe = client.post(
        "/inspect", files=files_for(rgb, depth), data={"object": "alpha", "return_map": "true"}
    )
    low = probe.json()["anomaly_map"]["min"]
    data = {"object": "alpha", "threshold": (low + probe.json()["raw_score"]) / 2}  # part of the map above it
    as_png = client.post("/inspect", files=files_for(rgb, depth), data={**data, "mask": "png"}).json()
    as_rle = client.post("/inspect", files=files_for(rgb, depth), data={**data, "mask": "rle"}).json()
    png_mask = decode_mask_png(as_png["mask"])
    rle_mask = decode_mask_rle(as_rle["mask"])
    assert as_rle["mask"]["size"] == [HEIGHT, WIDTH] and sum(as_rle["mask"]["counts"]) == HEIGHT * WIDTH
    assert 0 < png_mask.sum() < png_mask.size
    np.testing.assert_array_equal(rle_mask, png_mask)
    assert as_rle["defect_area_fraction"] == pytest.approx(rle_mask.mean())


def test_mask_none_returns_no_mask_but_still_the_area(client):
    rgb, depth = part("alpha", 5, defect=True)
    body = client.post(
        "/inspect", files=files_for(rgb, depth), data={"object": "alpha", "mask": "none", "threshold": "0"}
    ).json()
    assert body["mask_format"] == "none" and body["mask"] is None and body["anomaly_map"] is None
    assert body["defect_area_fraction"] > 0


def test_the_returned_map_is_the_in_process_model_map_at_input_resolution(client, reference):
    rgb, depth = part("alpha", 5, defect=True)
    body = client.post(
        "/inspect",
        files=files_for(rgb, depth),
        data={"object": "alpha", "return_map": "true", "mask": "none"},
    ).json()
    expected = reference.predict([InspectionInput(rgb, depth, "alpha")])[0]
    expected_map = resize_map(torch.from_numpy(expected.anomaly_map), HEIGHT, WIDTH).numpy()
    returned = decode_anomaly_map(body["anomaly_map"])
    quantum = (body["anomaly_map"]["max"] - body["anomaly_map"]["min"]) / 65535
    assert returned.shape == (HEIGHT, WIDTH)
    assert np.abs(returned - expected_map).max() <= quantum / 2 + 1e-5
    assert body["anomaly_map"]["min"] == pytest.approx(float(expected_map.min()), abs=1e-5)
    assert body["anomaly_map"]["max"] == pytest.approx(float(expected_map.max()), abs=1e-5)


def test_every_depth_format_is_read_and_float_formats_agree(client):
    rgb, depth = part("alpha", 9)
    xyz = np.stack([np.zeros_like(depth) + 0.1, np.zeros_like(depth) + 0.2, depth], axis=-1)
    formats = {
        "z.tiff": tiff_bytes(depth),
        "xyz.tiff": tiff_bytes(xyz),
        "z.npy": npy_bytes(depth),
        "z16.png": png_bytes((depth * 50000).astype(np.uint16)),
    }
    scores = {}
    for name, data in formats.items():
        files = {
            "rgb": ("part.png", png_bytes(rgb), "image/png"),
            "depth": (name, data, "application/octet-stream"),
        }
        response = client.post("/inspect", files=files, data={"object": "alpha", "mask": "none"})
        assert response.status_code == 200, (name, response.text)
        assert response.json()["modalities"] == ["rgb", "depth"]
        scores[name] = response.json()["raw_score"]
    assert scores["xyz.tiff"] == pytest.approx(scores["z.tiff"], abs=1e-5)
    assert scores["z.npy"] == pytest.approx(scores["z.tiff"], abs=1e-5)


@pytest.mark.parametrize("name,encode", [("part.jpg", jpeg_bytes), ("part.tiff", tiff_bytes)])
def test_jpeg_and_tiff_rgb_are_read(client, name, encode):
    rgb, _ = part("beta", 2)
    response = client.post(
        "/inspect",
        files={"rgb": (name, encode(rgb), "application/octet-stream")},
        data={"object": "beta", "mask": "rle"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["modalities"] == ["rgb"]


def test_each_answer_is_appended_to_the_decision_log(client):
    rgb, _ = part("beta", 3)
    body = client.post("/inspect", files=files_for(rgb), headers={"X-Request-ID": "log-check-1"}).json()
    state = client.app.state.iumad
    assert state.decisions.flush()
    lines = [
        json.loads(line)
        for path in sorted((state.settings.data_dir / "decisions").glob("decisions-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    record = next(line for line in lines if line["request_id"] == "log-check-1")
    assert record["decision"] == ("fail" if body["is_anomalous"] else "pass")
    assert record["object"] == body["object"] and record["model_version"] == body["model_version"]
    assert record["score"] == pytest.approx(body["score"]) and record["threshold"] == pytest.approx(
        body["threshold"]
    )
    assert record["latency_ms"] > 0 and record["time"].endswith("+00:00")


def test_metrics_count_inspections_by_object_version_and_decision(client):
    text = client.get("/metrics").text
    assert (
        'iumad_inspections_total{decision="pass",model_version="v20260101T000000-test01",object="beta"}'
        in text
    )
    for stage in ("decode", "queue", "infer", "post"):
        assert f'iumad_stage_latency_seconds_count{{stage="{stage}"}}' in text
    assert "iumad_batch_size_bucket" in text
    assert (
        'iumad_active_model_info{backend="torch",device="cpu",model_version="v20260101T000000-test01"} 1.0'
        in text
    )
