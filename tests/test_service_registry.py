"""GET /objects, PATCH /objects/{name} (threshold overrides), GET /models."""

from __future__ import annotations

import json
import shutil

import pytest
from fastapi.testclient import TestClient
from service_support import build_version, files_for, part, service_settings, wait_ready

from service.app import create_app
from service.errors import ServiceUnavailableError
from service.thresholds import THRESHOLDS_KEY, FileThresholdStore, RedisThresholdStore, open_threshold_store

VERSION = "v20260101T000000-test01"
RGB, DEPTH = part("alpha", 41)


class FakeRedis:
    """The three hash commands the threshold store uses; `down` makes every call fail like a lost server."""

    def __init__(self) -> None:
        self.hashes: dict[str, dict[bytes, bytes]] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("Connection refused")

    def hgetall(self, key):
        self._check()
        return dict(self.hashes.get(key, {}))

    def hset(self, key, field, value):
        self._check()
        self.hashes.setdefault(key, {})[field.encode()] = value.encode()

    def hdel(self, key, field):
        self._check()
        self.hashes.get(key, {}).pop(field.encode(), None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    build_version(data_dir / "models")
    return data_dir


@pytest.fixture
def client(data_dir):
    (data_dir / "thresholds.json").unlink(missing_ok=True)
    with TestClient(create_app(service_settings(data_dir))) as client:
        wait_ready(client)
        yield client


def test_objects_lists_every_enrolled_object_with_its_threshold_and_samples(client):
    body = client.get("/objects").json()
    assert body["model_version"] == VERSION
    by_name = {item["name"]: item for item in body["objects"]}
    assert set(by_name) == {"alpha", "beta"}
    alpha = by_name["alpha"]
    assert alpha["modalities"] == ["rgb", "depth"] and by_name["beta"]["modalities"] == ["rgb"]
    assert alpha["enrolled_in"] == VERSION and alpha["train_samples"] == 4 and alpha["holdout_samples"] == 2
    assert alpha["threshold"] == alpha["calibrated_threshold"] and alpha["threshold_source"] == "calibrated"
    assert alpha["threshold_override"] is None and "score_median" in alpha["calibration"]
    assert client.get("/objects/alpha").json() == alpha


def test_unknown_and_invalid_object_names(client):
    assert client.get("/objects/gamma").status_code == 404
    response = client.get("/objects/Not_Valid!")
    assert response.status_code == 422 and response.json()["error"]["code"] == "validation_error"
    assert client.patch("/objects/gamma", json={"threshold": 1.0}).status_code == 404


def test_an_operator_threshold_applies_to_inspections_and_survives_a_restart(client, data_dir):
    patched = client.patch("/objects/alpha", json={"threshold": 0.25})
    assert patched.status_code == 200
    assert patched.json()["threshold"] == 0.25 and patched.json()["threshold_source"] == "operator"
    assert json.loads((data_dir / "thresholds.json").read_text()) == {"alpha": 0.25}

    inspected = client.post("/inspect", files=files_for(RGB, DEPTH), data={"object": "alpha"}).json()
    assert inspected["threshold"] == 0.25 and inspected["threshold_source"] == "operator"
    assert inspected["score"] > 0.5 if inspected["raw_score"] > 0.25 else inspected["score"] <= 0.5
    request_wins = client.post(
        "/inspect", files=files_for(RGB, DEPTH), data={"object": "alpha", "threshold": 9}
    )
    assert request_wins.json()["threshold_source"] == "request"

    with TestClient(create_app(service_settings(data_dir))) as restarted:
        wait_ready(restarted)
        assert restarted.get("/objects/alpha").json()["threshold"] == 0.25

    cleared = client.patch("/objects/alpha", json={"threshold": None}).json()
    assert (
        cleared["threshold_source"] == "calibrated"
        and cleared["threshold"] == cleared["calibrated_threshold"]
    )
    assert json.loads((data_dir / "thresholds.json").read_text()) == {}


@pytest.mark.parametrize("body", ['{"threshold": NaN}', '{"threshold": "high"}', "{}", "not json"])
def test_a_threshold_must_be_a_finite_number_or_null(client, body):
    response = client.patch("/objects/alpha", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


def test_models_lists_versions_with_parent_objects_and_activity(client, data_dir):
    models_dir = data_dir / "models"
    (models_dir / "v-unreadable").mkdir(exist_ok=True)
    (models_dir / "v-unreadable" / "manifest.json").write_text("{")
    (models_dir / ".tmp-v-staging").mkdir(exist_ok=True)
    body = client.get("/models").json()
    assert body["active"] == body["serving"] == VERSION
    (model,) = body["models"]
    assert model["version"] == VERSION and model["parent"] is None and model["objects"] == ["alpha", "beta"]
    assert model["active"] and model["serving"] and model["created"] and model["training"]["kind"] == "base"
    assert "curve" not in model["training"] and model["metrics"] == {}
    assert [entry["directory"] for entry in body["unreadable"]] == ["v-unreadable"]
    assert client.get("/models/active").json() == model
    assert client.get(f"/models/{VERSION}").json() == model
    assert client.get("/models/v-unknown").status_code == 404
    assert model["status"] == "active"


def test_models_marks_a_candidate_whose_forgetting_guard_failed_as_needing_review(client, data_dir):
    models_dir = data_dir / "models"
    candidate = models_dir / "v-candidate"
    shutil.copytree(models_dir / VERSION, candidate, dirs_exist_ok=True)
    manifest = json.loads((candidate / "manifest.json").read_text())
    manifest["version"] = "v-candidate"
    manifest["metrics"] = {"forgetting_guard": {"passed": False, "summary": "alpha forgot"}}
    (candidate / "manifest.json").write_text(json.dumps(manifest))
    try:
        listed = {model["version"]: model["status"] for model in client.get("/models").json()["models"]}
        assert listed == {VERSION: "active", "v-candidate": "needs_review"}
    finally:
        shutil.rmtree(candidate)


def test_the_file_store_writes_atomically_and_sees_other_writers(tmp_path):
    first, second = (
        FileThresholdStore(tmp_path / "thresholds.json"),
        FileThresholdStore(tmp_path / "thresholds.json"),
    )
    first.set("alpha", 1.5)
    assert second.get("alpha") == 1.5  # another gateway on the same data directory
    second.set("beta", -0.5)
    assert first.all() == {"alpha": 1.5, "beta": -0.5}
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_with_redis_overrides_live_in_a_shared_hash_and_outlive_an_outage():
    redis = FakeRedis()
    gateway_a, gateway_b = RedisThresholdStore(redis, refresh_s=0), RedisThresholdStore(redis, refresh_s=0)
    gateway_a.set("alpha", 0.75)
    assert redis.hashes[THRESHOLDS_KEY] == {b"alpha": b"0.75"}
    assert gateway_b.get("alpha") == 0.75
    redis.down = True
    assert gateway_b.get("alpha") == 0.75  # Redis down: keep applying what we knew
    with pytest.raises(ServiceUnavailableError):
        gateway_a.set("alpha", 1.0)
    redis.down = False
    gateway_a.clear("alpha")
    assert gateway_b.get("alpha") is None


def test_the_store_is_the_redis_hash_when_the_app_has_redis_else_the_file(tmp_path):
    assert isinstance(open_threshold_store(tmp_path, FakeRedis()), RedisThresholdStore)
    store = open_threshold_store(tmp_path, None)
    assert isinstance(store, FileThresholdStore) and store.path == tmp_path / "thresholds.json"
