"""API keys: cameras inspect, operators also change thresholds; probes need no key."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from service_support import build_version, files_for, part, png_bytes, service_settings, wait_ready

from service.app import create_app
from service.auth import role_of

CAMERA, OPERATOR = "camera-key-0123456789", "operator-key-9876543210"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    build_version(data_dir / "models")
    settings = service_settings(data_dir, inspect_api_keys=[CAMERA], operator_api_keys=[OPERATOR])
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def headers(key: str | None) -> dict[str, str]:
    return {"X-API-Key": key} if key is not None else {}


RGB, _ = part("beta", 31)


@pytest.mark.parametrize("key,status", [(None, 401), ("wrong-key", 401), (CAMERA, 200), (OPERATOR, 200)])
def test_inspect_needs_an_inspect_or_operator_key(client, key, status):
    response = client.post("/inspect", files=files_for(RGB), headers=headers(key))
    assert response.status_code == status, response.text
    if status == 401:
        assert response.json()["error"]["code"] == "unauthorized"
        assert "X-API-Key" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("key,status", [(None, 401), ("wrong-key", 401), (CAMERA, 403), (OPERATOR, 200)])
def test_setting_a_threshold_needs_an_operator_key(client, key, status):
    response = client.patch("/objects/beta", json={"threshold": None}, headers=headers(key))
    assert response.status_code == status, response.text
    if status == 403:
        assert "operator" in response.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/objects", "/objects/alpha", "/models", "/models/active"])
def test_reading_the_registry_needs_a_key(client, path):
    assert client.get(path).status_code == 401
    assert client.get(path, headers=headers(CAMERA)).status_code == 200


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_need_no_key(client, path):
    assert client.get(path).status_code == 200


def test_the_key_is_checked_before_the_upload_is_looked_at(client):
    response = client.post("/inspect", files={"rgb": ("x.png", png_bytes(RGB)[:50], "image/png")})
    assert response.status_code == 401  # not the 400 the truncated PNG would get


def test_without_keys_auth_is_off(tmp_path):
    settings = service_settings(tmp_path)
    assert not settings.auth_enabled and role_of(settings, None) == "anonymous"
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["auth_enabled"] is False
        assert client.get("/objects").status_code == 200
