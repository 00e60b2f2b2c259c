"""Operators' corrections: a verdict on an inspection is stored with who, when, what the gateway
answered and the part's images; every refusal names what is wrong and loses nothing stored."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_support import (
    build_version,
    files_for,
    part,
    png_bytes,
    service_settings,
    wait_ready,
)

from core.names import is_request_id
from service.app import create_app
from service.decision_log import DecisionLog, DecisionRecord, utc_now_iso
from store.feedback import Correction, FeedbackStore, FeedbackStoreFullError, InspectionFacts

CAMERA, OPERATOR = "camera-key-0123456789", "operator-key-9876543210"
OPERATOR_HEADERS = {"X-API-Key": OPERATOR}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    build_version(data_dir / "models")
    settings = service_settings(
        data_dir, inspect_api_keys=[CAMERA], operator_api_keys=[OPERATOR], keep_rejected_images=True
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def inspect(client, kind: str, seed: int, rejected: bool) -> dict:
    """An inspection the gateway fails (a threshold under any score) or passes (one above)."""
    rgb, depth = part(kind, seed)
    response = client.post(
        "/inspect",
        files=files_for(rgb, depth),
        data={"object": kind, "threshold": "-1000" if rejected else "1000"},
        headers={"X-API-Key": CAMERA},
    )
    assert response.status_code == 200, response.text
    assert response.json()["is_anomalous"] is rejected
    return response.json()


def mark(client, request_id: str, verdict: str, key: str = OPERATOR, **kwargs):
    return client.post(
        f"/inspections/{request_id}/feedback", headers={"X-API-Key": key}, json={"verdict": verdict}, **kwargs
    )


def pending(client, name: str) -> dict:
    response = client.get(f"/objects/{name}/feedback", headers=OPERATOR_HEADERS)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_false_reject_marked_good_is_stored_with_who_when_and_the_kept_images(client):
    answer = inspect(client, "alpha", 1, rejected=True)
    response = mark(client, answer["request_id"], "good")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["kind"] == "false_reject" and body["decision"] == "fail"
    assert body["model_version"] == answer["model_version"] and body["score"] == answer["score"]
    assert body["images"] == ["depth", "rgb"] and body["images_source"] == "kept"
    assert body["marked_by"].startswith("key-") and OPERATOR not in json.dumps(body)
    listed = pending(client, "alpha")
    assert [c["request_id"] for c in listed["pending"]] == [answer["request_id"]]
    assert listed["counts"]["good"] >= 1
    state = client.app.state.iumad
    stored = state.feedback.get("alpha", answer["request_id"])
    assert state.feedback.image_path(stored, "rgb").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = client.get("/metrics").text
    assert 'iumad_corrections_total{object="alpha",verdict="good"}' in metrics


def test_a_verdict_sent_again_replaces_the_earlier_one(client):
    answer = inspect(client, "beta", 2, rejected=True)
    assert mark(client, answer["request_id"], "good").status_code == 200
    assert mark(client, answer["request_id"], "good").status_code == 200
    again = mark(client, answer["request_id"], "defective")
    assert again.status_code == 200 and again.json()["kind"] == "confirmed_defect"
    mine = [c for c in pending(client, "beta")["pending"] if c["request_id"] == answer["request_id"]]
    assert len(mine) == 1 and mine[0]["verdict"] == "defective" and mine[0]["images"] == ["rgb"]


def test_a_missed_defect_on_a_passed_part_needs_its_images_attached(client):
    answer = inspect(client, "alpha", 3, rejected=False)
    refused = mark(client, answer["request_id"], "defective")
    assert refused.status_code == 409
    assert "were not kept" in refused.json()["error"]["message"]
    rgb, depth = part("alpha", 3, defect=True)
    response = client.post(
        f"/inspections/{answer['request_id']}/feedback",
        headers=OPERATOR_HEADERS,
        data={"verdict": "defective"},
        files=files_for(rgb, depth),
    )
    assert response.status_code == 200, response.text
    assert response.json()["kind"] == "missed_defect" and response.json()["images_source"] == "attached"


@pytest.mark.parametrize(
    "kind,with_depth,status,words",
    [
        ("beta", True, 422, "RGB-only"),
        ("alpha", False, 422, "enrolled with depth"),
    ],
)
def test_attached_images_must_match_the_objects_modalities(client, kind, with_depth, status, words):
    answer = inspect(client, kind, 4, rejected=False)
    rgb, depth = part("alpha", 4)
    files = files_for(rgb, depth if with_depth else None)
    response = client.post(
        f"/inspections/{answer['request_id']}/feedback",
        headers=OPERATOR_HEADERS,
        data={"verdict": "defective"},
        files=files,
    )
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_a_part_attached_at_full_size_is_accepted_as_an_inspection_would_be(client):
    answer = inspect(client, "beta", 8, rejected=False)
    noise = np.random.default_rng(0).integers(0, 256, (900, 900, 3), dtype=np.uint8)
    image = png_bytes(noise)
    assert len(image) > 2 * 1024 * 1024  # past the 1 MiB that bodies of other routes may have
    response = client.post(
        f"/inspections/{answer['request_id']}/feedback",
        headers=OPERATOR_HEADERS,
        data={"verdict": "defective"},
        files={"rgb": ("big.png", image, "image/png")},
    )
    assert response.status_code == 200, response.text


def test_an_unreadable_attachment_is_a_400_and_stores_nothing(client):
    answer = inspect(client, "beta", 5, rejected=False)
    response = client.post(
        f"/inspections/{answer['request_id']}/feedback",
        headers=OPERATOR_HEADERS,
        data={"verdict": "defective"},
        files={"rgb": ("x.png", png_bytes(part("beta", 5)[0])[:60], "image/png")},
    )
    assert response.status_code == 400, response.text
    assert client.app.state.iumad.feedback.get("beta", answer["request_id"]) is None


def test_refusals(client):
    answer = inspect(client, "beta", 6, rejected=True)
    request_id = answer["request_id"]
    assert mark(client, "no-such-inspection", "good").status_code == 404
    assert mark(client, request_id, "good", key=CAMERA).status_code == 403
    assert client.post(f"/inspections/{request_id}/feedback", json={"verdict": "good"}).status_code == 401
    bad = mark(client, request_id, "fine")
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    text = client.post(
        f"/inspections/{request_id}/feedback", headers={**OPERATOR_HEADERS, "Content-Type": "text/plain"},
        content=b"good",
    )  # fmt: skip
    assert text.status_code == 415
    assert client.post("/inspections/bad%0Aid/feedback", headers=OPERATOR_HEADERS, json={}).status_code == 422
    assert client.get("/objects/beta/feedback", headers={"X-API-Key": CAMERA}).status_code == 403
    assert client.app.state.iumad.feedback.get("beta", request_id) is None  # nothing was stored


def test_a_discarded_correction_and_its_images_are_gone(client):
    answer = inspect(client, "beta", 7, rejected=True)
    stored = mark(client, answer["request_id"], "good")
    assert stored.status_code == 200
    state = client.app.state.iumad
    image = state.feedback.image_path(state.feedback.get("beta", answer["request_id"]), "rgb")
    path = f"/inspections/{answer['request_id']}/feedback"
    assert client.delete(path, headers=OPERATOR_HEADERS).status_code == 204
    assert not image.exists()
    assert answer["request_id"] not in [c["request_id"] for c in pending(client, "beta")["pending"]]
    assert client.delete(path, headers=OPERATOR_HEADERS).status_code == 404


def _facts(request_id: str, name: str = "alpha") -> InspectionFacts:
    return InspectionFacts(request_id, name, "v1", 0.9, 3.0, 2.0, "fail", utc_now_iso())


def test_a_full_store_refuses_new_corrections_and_keeps_the_stored_ones(tmp_path):
    store = FeedbackStore(tmp_path, max_bytes=1000)
    first = Correction(_facts("r1"), "good", "key-1", utc_now_iso())
    store.put(first, {"rgb": b"\x89PNG" + bytes(600)})
    with pytest.raises(FeedbackStoreFullError, match="IUMAD_FEEDBACK_MAX_MB"):
        store.put(Correction(_facts("r2"), "good", "key-1", utc_now_iso()), {"rgb": bytes(600)})
    assert [c.request_id for c in store.pending("alpha")] == ["r1"]
    store.put(
        Correction(_facts("r1"), "defective", "key-2", utc_now_iso()), None
    )  # a new verdict, same images
    (again,) = store.pending("alpha")
    assert again.verdict == "defective" and store.image_path(again, "rgb").stat().st_size == 604


def test_the_decision_log_finds_the_latest_record_of_an_id_across_its_files(tmp_path):
    log = DecisionLog(tmp_path / "decisions", log_max_bytes=64 * 1024 * 8)
    log.start()

    def record(request_id: str, score: float) -> DecisionRecord:
        return DecisionRecord(
            request_id, utc_now_iso(), "alpha", "request", "v1", score, score, 1.0, "pass", 1.0
        )

    log.record(record("a", 0.1))
    for index in range(400):  # more than one part of 64 KiB
        log.record(record(f"filler-{index}", 0.0))
    log.record(record("a", 0.7))
    log.record(record("ab", 0.9))
    try:
        assert log.find("a").record.score == 0.7
        assert log.find("ab").record.score == 0.9
        assert log.find("filler-3").record.request_id == "filler-3"
        assert log.find("b") is None
    finally:
        log.close()
    assert len(list((tmp_path / "decisions").glob("*.jsonl"))) >= 2


def test_request_ids_are_plain_tokens():
    assert is_request_id("0f3a-b.c:1") and not is_request_id("a\n") and not is_request_id("../x")
