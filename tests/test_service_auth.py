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


@pytest.fixture(scope="module")
def open_client(tmp_path_factory):
    """Auth off, as on a developer's loopback gateway."""
    data_dir = tmp_path_factory.mktemp("open")
    build_version(data_dir / "models")
    settings = service_settings(data_dir, allowed_origins=["https://line-ui.example"])
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize(
    "extra",
    [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site", "Origin": "http://testserver"},
    ],
)
def test_a_browser_on_another_site_cannot_change_state(open_client, extra):
    threshold = open_client.patch("/objects/beta", json={"threshold": 1.0}, headers=extra)
    assert threshold.status_code == 403 and threshold.json()["error"]["code"] == "cross_site_request"
    form = open_client.post("/models/v-nonexistent/activate", data={"x": "1"}, headers=extra)
    assert form.status_code == 403  # refused before the route could even look for the version
    assert open_client.get("/objects/beta", headers=extra).status_code == 200  # reading is fine


@pytest.mark.parametrize(
    "extra",
    [
        {},  # a camera or a script
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},  # the dashboard
        {"Origin": "https://line-ui.example"},  # IUMAD_ALLOWED_ORIGINS
        {"Sec-Fetch-Site": "none"},  # typed into the address bar
    ],
)
def test_cameras_the_dashboard_and_allowed_origins_may_change_state(open_client, extra):
    response = open_client.patch("/objects/beta", json={"threshold": None}, headers=extra)
    assert response.status_code == 200, response.text


def test_serve_refuses_a_network_address_with_auth_off(tmp_path, monkeypatch):
    from iumad.cli import main

    monkeypatch.setenv("IUMAD_DATA_DIR", str(tmp_path))
    for name in ("IUMAD_INSPECT_API_KEYS", "IUMAD_OPERATOR_API_KEYS", "IUMAD_ALLOW_NO_AUTH"):
        monkeypatch.delenv(name, raising=False)
    from core.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
        assert not (tmp_path / "redis").exists()  # stopped before starting anything
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("host", "keys", "allow", "refused"),
    [
        ("0.0.0.0", False, False, True),
        ("192.168.1.20", False, False, True),
        ("line-pc.local", False, False, True),
        ("::", False, False, True),
        ("0.0.0.0", True, False, False),
        ("0.0.0.0", False, True, False),
        ("127.0.0.1", False, False, False),
        ("::1", False, False, False),
        ("localhost", False, False, False),
    ],
)
def test_which_addresses_need_keys(tmp_path, host, keys, allow, refused):
    from core.settings import Settings
    from service.auth import exposure_problem

    settings = Settings(
        data_dir=tmp_path, host=host, operator_api_keys=[OPERATOR] if keys else [], allow_no_auth=allow
    )
    assert (exposure_problem(settings) is not None) == refused
