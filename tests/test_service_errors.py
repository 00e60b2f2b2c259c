"""Bad input gets a clear 4xx in one JSON shape, never a 500, and the gateway keeps serving."""

from __future__ import annotations

import errno
import io
import time

import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient
from service_support import (
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

from service.app import create_app

RGB, DEPTH = part("alpha", 21)


def jpeg_claiming_16_bits() -> bytes:
    """A real JPEG whose start-of-frame header says 16-bit samples (JPEG baseline is 8-bit)."""
    data = bytearray(jpeg_bytes(RGB))
    sof = data.find(b"\xff\xc0")
    assert sof > 0, "no baseline SOF0 marker"
    data[sof + 4] = 16  # marker (2 bytes), segment length (2 bytes), then the sample precision
    return bytes(data)


def rgb_file(data: bytes, name: str = "part.png") -> dict:
    return {"rgb": (name, data, "application/octet-stream")}


def with_depth(data: bytes, name: str = "depth.tiff") -> dict:
    return {**rgb_file(png_bytes(RGB)), "depth": (name, data, "application/octet-stream")}


def npy_declaring(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    """A .npy header declaring `shape`, followed by a few bytes: what a hostile client can send cheaply."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


def compressed_float64_xyz(side: int) -> bytes:
    """Zeros compress ~1000:1: about 96 kB on the wire, 24 bytes a pixel once decoded."""
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((side, side, 3)), photometric="rgb", compression="zlib")
    return buffer.getvalue()


# (case, files, form fields, expected status, expected error code, words the message must contain)
BAD_INPUTS = [
    ("truncated PNG", rgb_file(png_bytes(RGB)[:300]), {}, 400, "invalid_input", "truncated"),
    (
        "JPEG claiming 16-bit samples",
        rgb_file(jpeg_claiming_16_bits(), "part.jpg"),
        {},
        400,
        "invalid_input",
        "JPEG",
    ),
    ("zero-byte RGB", rgb_file(b""), {}, 400, "invalid_input", "empty"),
    ("zero-byte depth", with_depth(b""), {}, 400, "invalid_input", "empty"),
    (
        "RGB and depth sizes differ",
        with_depth(tiff_bytes(DEPTH[:64, :64])),
        {},
        400,
        "invalid_input",
        "pixel aligned",
    ),
    (
        "NaN-only depth",
        with_depth(tiff_bytes(np.full_like(DEPTH, np.nan))),
        {},
        400,
        "invalid_input",
        "no valid depth",
    ),
    (
        "5-channel TIFF depth",
        with_depth(tiff_bytes(np.zeros((80, 96, 5), np.float32) + 0.5)),
        {},
        400,
        "invalid_input",
        "5 channels",
    ),
    (
        "5-channel TIFF RGB",
        rgb_file(tiff_bytes(np.zeros((80, 96, 5), np.uint8)), "part.tiff"),
        {},
        400,
        "invalid_input",
        "cannot read TIFF",
    ),
    (
        ".npy holding Python objects",
        with_depth(npy_bytes(np.array([{"a": 1}, None], dtype=object)), "d.npy"),
        {},
        400,
        "invalid_input",
        "Python objects",
    ),
    (
        "text instead of an image",
        rgb_file(b"hello, I am not an image"),
        {},
        415,
        "unsupported_media_type",
        "PNG, JPEG, BMP or TIFF",
    ),
    (
        "8-bit PNG as depth",
        with_depth(png_bytes(np.zeros((80, 96), np.uint8)), "d.png"),
        {},
        400,
        "invalid_input",
        "16-bit",
    ),
    (
        "unknown object",
        files_for(RGB, DEPTH),
        {"object": "gamma"},
        404,
        "not_found",
        "enrolled objects: alpha, beta",
    ),
    (
        "invalid object name",
        files_for(RGB, DEPTH),
        {"object": "Not A Name"},
        422,
        "validation_error",
        "object",
    ),
    ("unknown mask format", files_for(RGB, DEPTH), {"mask": "foo"}, 422, "validation_error", "mask"),
    (
        "return_map not a boolean",
        files_for(RGB, DEPTH),
        {"return_map": "maybe"},
        422,
        "validation_error",
        "return_map",
    ),
    (
        "threshold not a number",
        files_for(RGB, DEPTH),
        {"threshold": "high"},
        422,
        "validation_error",
        "threshold",
    ),
    ("threshold NaN", files_for(RGB, DEPTH), {"threshold": "nan"}, 422, "validation_error", "threshold"),
    (
        "no rgb field",
        {"depth": ("d.tiff", tiff_bytes(DEPTH), "image/tiff")},
        {},
        422,
        "validation_error",
        "rgb",
    ),
    (
        "rgb sent as text, not a file",
        {"depth": ("d.tiff", tiff_bytes(DEPTH), "image/tiff")},
        {"rgb": "not a file"},
        422,
        "validation_error",
        "file upload",
    ),
    (
        ".npy header declaring 400 MB of float64 xyz",
        with_depth(npy_declaring((4096, 4096, 3)), "d.npy"),
        {},
        413,
        "payload_too_large",
        "decodes to",
    ),
    (
        "compressed float64 xyz TIFF past the decoded-size limit",
        with_depth(compressed_float64_xyz(1900)),
        {},
        413,
        "payload_too_large",
        "more than the limit of 67108864",
    ),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    build_version(data_dir / "models")
    return data_dir


@pytest.fixture(scope="module")
def client(data_dir):
    app = create_app(service_settings(data_dir, max_inspect_bytes=2_000_000))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


def assert_still_serving(client):
    response = client.post("/inspect", files=files_for(RGB, DEPTH), data={"mask": "none"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "case,files,data,status,code,words", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS]
)
def test_bad_input_gets_a_clear_4xx(client, case, files, data, status, code, words):
    response = client.post("/inspect", files=files, data=data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert words in error["message"], error["message"]
    assert response.headers["X-Request-ID"]
    assert_still_serving(client)


def test_json_instead_of_a_form_is_415(client):
    response = client.post("/inspect", json={"rgb": "aGVsbG8="})
    assert response.status_code == 415 and "multipart/form-data" in response.json()["error"]["message"]


def test_an_oversized_upload_is_refused_with_413_from_its_declared_length(client):
    big = b"\x89PNG\r\n\x1a\n" + bytes(2_100_000)
    response = client.post("/inspect", files=rgb_file(big))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    assert "2000000" in response.json()["error"]["message"]
    assert_still_serving(client)


def test_a_json_body_for_a_small_endpoint_has_its_own_small_limit(client):
    response = client.patch(
        "/objects/alpha", content=b"{" + b" " * 2_000_000 + b"}", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


def test_unknown_paths_and_methods_answer_in_the_error_shape(client):
    assert client.get("/nope").json()["error"]["code"] == "not_found"
    response = client.get("/inspect")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_an_unexpected_failure_is_a_500_in_the_same_shape(client, monkeypatch):
    def explode(item):
        raise RuntimeError("boom")

    monkeypatch.setattr(client.app.state.iumad.runtime, "prepare", explode)
    response = client.post("/inspect", files=files_for(RGB, DEPTH), headers={"X-Request-ID": "crash-1"})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "crash-1" in response.json()["error"]["message"]
    assert "boom" not in response.text  # internals stay in the log
    monkeypatch.undo()
    assert_still_serving(client)


def test_before_any_enrolment_inspect_answers_409_saying_how_to_enrol(tmp_path):
    with TestClient(create_app(service_settings(tmp_path))) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["state"] == "empty"
        response = client.post("/inspect", files=files_for(RGB, DEPTH))
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "nothing_enrolled"
        assert "POST /enroll-object" in response.json()["error"]["message"]
        assert client.get("/objects").json() == {"model_version": None, "objects": []}
        assert client.get("/models/active").status_code == 409
        assert client.get("/models").json()["models"] == []


def test_an_active_version_that_cannot_load_makes_the_gateway_unready(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ACTIVE").write_text("v-missing\n")
    with TestClient(create_app(service_settings(tmp_path))) as client:
        for _ in range(600):
            ready = client.get("/readyz")
            if ready.json()["state"] != "loading":
                break
            time.sleep(0.05)
        assert ready.status_code == 503 and ready.json()["state"] == "failed"
        assert "v-missing" in ready.json()["last_load_error"]["version_dir"]
        response = client.post("/inspect", files=files_for(RGB, DEPTH))
        assert response.status_code == 503 and response.json()["error"]["code"] == "not_ready"
        assert "failed to load" in response.json()["error"]["message"] and "Retry-After" in response.headers


def test_a_full_disk_while_receiving_an_inspection_is_503_and_the_gateway_keeps_serving(client, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/tmp/spool")

    monkeypatch.setattr("service.uploads.INSPECTION_SPOOL_BYTES", 1000)  # every file spools to disk
    monkeypatch.setattr("service.uploads.tempfile.TemporaryFile", disk_full)
    response = client.post("/inspect", files=files_for(RGB, DEPTH))
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "60"
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and "disk is full" in error["message"]
    assert "/tmp/spool" not in error["message"]
    monkeypatch.undo()
    assert_still_serving(client)
