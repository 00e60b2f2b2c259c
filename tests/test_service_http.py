"""The gateway as deployed: `iumad serve` in its own process, spoken to over real TCP."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from service_support import build_version, files_for, part

from iumad.embedded import free_port

LIMIT = 1_000_000  # IUMAD_MAX_INSPECT_BYTES for this server
BODY_TIMEOUT_S = 2.0  # IUMAD_BODY_TIMEOUT_S
VERSION = "v20260101T000000-test01"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    build_version(data_dir / "models")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("IUMAD_")}
    env.update(
        {
            "IUMAD_DATA_DIR": str(data_dir),
            "IUMAD_DEVICE": "cpu",
            "IUMAD_MAX_INSPECT_BYTES": str(LIMIT),
            "IUMAD_DECODE_THREADS": "2",
            "IUMAD_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "IUMAD_EMBEDDED_WORKER": "false",
            "IUMAD_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "PYTHONUNBUFFERED": "1",
        }
    )
    log_path = data_dir / "gateway.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "iumad.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    activated = False
    while True:
        try:
            ready = httpx.get(f"{url}/readyz", timeout=2)
            if ready.status_code == 200 and ready.json()["model_version"] == VERSION:
                break
            if ready.status_code == 200 and ready.json()["state"] == "empty" and not activated:
                # `iumad serve` runs the embedded Redis registry: activate the version on disk there.
                activation = httpx.post(f"{url}/models/{VERSION}/activate", timeout=30)
                assert activation.status_code == 200, activation.text
                activated = True
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"gateway did not become ready:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    yield url, process, log_path
    if process.poll() is None:
        process.kill()
        process.wait(10)


def raw_request(url: str, head: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    connection.sendall(head.encode("latin-1"))
    return connection


def read_status(connection: socket.socket) -> str:
    data = b""
    while b"\r\n" not in data:
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode("latin-1")


def test_inspect_over_real_http(server):
    url, _, _ = server
    rgb, depth = part("alpha", 51)
    response = httpx.post(
        f"{url}/inspect",
        files=files_for(rgb, depth),
        data={"mask": "rle"},
        headers={"X-Request-ID": "http-test-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"] == "http-test-1"
    assert body["mask"]["size"] == [80, 96] and body["model_version"] == VERSION


def test_a_declared_oversized_body_is_refused_before_it_is_sent(server):
    url, _, _ = server
    connection = raw_request(
        url,
        "POST /inspect HTTP/1.1\r\nHost: gateway\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        "Content-Length: 10000000000\r\n\r\n--x\r\n",
    )
    with connection:
        started = time.monotonic()
        status = read_status(connection)  # we sent 10 bytes of the announced 10 GB
        assert status.startswith("HTTP/1.1 413"), status
        assert time.monotonic() - started < 5


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    url, _, _ = server
    connection = raw_request(
        url,
        "POST /inspect HTTP/1.1\r\nHost: gateway\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
    )
    part_head = b'--x\r\nContent-Disposition: form-data; name="rgb"; filename="huge.png"\r\n\r\n'
    chunk = b"x" * 16384  # then an endless file
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent, status = 0, ""
    with connection:
        connection.sendall(f"{len(part_head):x}\r\n".encode() + part_head + b"\r\n")
        while sent < 64 * LIMIT:  # far more than the limit, unless the server stops us
            readable, _, _ = select.select([connection], [], [], 0)
            if readable:
                status = read_status(connection)
                break
            try:
                connection.sendall(framed)
            except (BrokenPipeError, ConnectionResetError):
                status = read_status(connection)
                break
            sent += len(chunk)
    assert status.startswith("HTTP/1.1 413"), status
    assert sent < 64 * LIMIT


def test_a_stalled_body_is_answered_408_while_others_are_served(server):
    url, _, _ = server
    connection = raw_request(
        url,
        "POST /inspect HTTP/1.1\r\nHost: gateway\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        "Content-Length: 5000\r\n\r\n--x\r\n",
    )
    with connection:
        started = time.monotonic()
        rgb, _ = part("beta", 52)
        assert httpx.post(f"{url}/inspect", files=files_for(rgb), timeout=30).status_code == 200
        status = read_status(connection)  # then sends nothing more
        assert status.startswith("HTTP/1.1 408"), status
        assert BODY_TIMEOUT_S <= time.monotonic() - started < BODY_TIMEOUT_S + 10


def test_it_keeps_serving_after_refusals_and_exposes_metrics(server):
    url, _, _ = server
    rgb, _ = part("beta", 52)
    assert httpx.post(f"{url}/inspect", files=files_for(rgb), timeout=30).status_code == 200
    assert (
        httpx.post(f"{url}/inspect", files={"rgb": ("x.png", b"", "image/png")}, timeout=30).status_code
        == 400
    )
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert "iumad_inspections_total" in metrics and "iumad_batch_size_count" in metrics
    assert "_created" not in metrics, "no *_created series: the app switches them off when it is made"


def test_sigterm_drains_and_exits_cleanly_with_json_logs(server):
    url, process, log_path = server
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("level") == "WARNING" and "AUTH IS OFF" in line["message"] for line in lines)
    assert any(line.get("request_id") == "http-test-1" for line in lines)
