"""`POST /objects/{name}/refine` over HTTP against a private real Redis, without a worker: what is
queued, and every refusal (nothing queued, the object's reservation untouched)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from service_support import build_version, service_settings, wait_ready

from core.settings import Settings
from service.app import create_app
from service.decision_log import utc_now_iso
from store.feedback import Correction, InspectionFacts
from store.job_store import JOB_SERIALIZER, JobStore
from store.queue import REFINEMENT_JOB
from store.registry import ModelRegistry

OPERATOR, CAMERA = "operator-key", "camera-key"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return service_settings(tmp_path / "data", operator_api_keys=[OPERATOR], inspect_api_keys=[CAMERA])


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    directory = build_version(settings.models_dir, activate=False)  # objects alpha and beta
    ModelRegistry(redis, settings.models_dir).activate(directory.name)
    with TestClient(create_app(settings, redis), headers={"X-API-Key": OPERATOR}) as test_client:
        wait_ready(test_client)
        yield test_client


def _pending_correction(client: TestClient, name: str = "alpha", request_id: str = "r1") -> None:
    facts = InspectionFacts(request_id, name, "v1", 0.9, 3.0, 2.0, "fail", utc_now_iso())
    store = client.app.state.iumad.feedback
    store.put(Correction(facts, "good", "key-test", utc_now_iso()), {"rgb": b"\x89PNG not read here"})


def _queued(settings: Settings, redis: Redis) -> int:
    return Queue(settings.queue_name, connection=redis, serializer=JOB_SERIALIZER).count


def test_a_refinement_is_queued_on_the_pending_corrections(client, settings, redis):
    _pending_correction(client, request_id="r1")
    _pending_correction(client, request_id="r2")
    response = client.post("/objects/alpha/refine", json={"max_minutes": 2})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "refinement" and job["object"] == "alpha" and job["status"] == "queued"
    assert job["options"] == {"max_minutes": 2.0, "corrections": 2}
    queue = Queue(settings.queue_name, connection=redis, serializer=JOB_SERIALIZER)
    (queued,) = queue.jobs
    assert queued.func_name == REFINEMENT_JOB
    assert sorted(queued.args[0]["corrections"]) == ["r1", "r2"]
    second = client.post("/objects/alpha/refine")
    assert second.status_code == 409 and job["job_id"] in second.json()["error"]["message"]
    assert _queued(settings, redis) == 1


@pytest.mark.parametrize(
    "name,body,status,words",
    [
        ("alpha", {}, 409, "no pending corrections"),
        ("gamma", {}, 404, "unknown object"),
        ("alpha", {"max_minutes": 0}, 422, "max_minutes"),
        ("alpha", {"max_minutes": 10_000}, 422, "max_minutes"),
    ],
)
def test_refusals_queue_nothing(client, settings, redis, name, body, status, words):
    if status == 422:
        _pending_correction(client)
    response = client.post(f"/objects/{name}/refine", json=body)
    assert response.status_code == status, response.text
    assert words in response.text
    assert _queued(settings, redis) == 0
    assert JobStore.for_settings(redis, settings).reserve(name, "probe") is None  # not left reserved


def test_an_inspect_key_cannot_refine(client, settings, redis):
    _pending_correction(client)
    response = client.post("/objects/alpha/refine", headers={"X-API-Key": CAMERA})
    assert response.status_code == 403
    assert _queued(settings, redis) == 0


def test_a_failed_refinement_is_refined_again_not_retried(client, settings, redis):
    _pending_correction(client)
    job_id = client.post("/objects/alpha/refine").json()["job_id"]
    JobStore.for_settings(redis, settings).finish(job_id, "failed", "killed")
    response = client.post(f"/jobs/{job_id}/retry")
    assert response.status_code == 409 and "POST /objects/alpha/refine" in response.json()["error"]["message"]
