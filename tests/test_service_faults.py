"""Faults the service must survive, with real processes: `iumad serve`, `iumad worker`, `redis-server`.

One stack per module (a private Redis on a spare port with an append-only file, a worker, a gateway
with tiny-model settings) and two enrolled objects, so each test starts from versions v1 (disc) and
v2 (disc + ring). Covered: hot swap under load, a corrupt version, a gateway that was stopped while
a version was activated, a Redis restart while the gateway serves, and the embedded services.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from redis import Redis
from service_processes import (
    http_ready,
    mvtec_zip,
    start_gateway,
    start_redis,
    start_worker,
    stop_process,
    tail,
    tiny_env,
    wait_until,
)

from iumad.embedded import EmbeddedServices, RedisServerProcess
from model.data.synthetic import write_synthetic_dataset
from store.connection import connect_redis, wait_for_redis
from store.registry import ModelRegistry

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    base: Path
    data: Path
    redis_server: RedisServerProcess
    worker: subprocess.Popen
    gateway: subprocess.Popen
    url: str
    v1: str
    v2: str

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(Redis.from_url(self.redis_server.url), self.data / "models")

    def serving(self) -> str | None:
        try:
            return httpx.get(self.url + "/readyz", timeout=2).json().get("model_version")
        except (httpx.HTTPError, ValueError):
            return None

    def activate_and_wait(self, version: str, timeout_s: float = 15.0) -> None:
        self.registry.activate(version, reason="test")
        wait_until(lambda: self.serving() == version, timeout_s, 0.1, f"the gateway to serve {version}")

    def logs(self) -> str:
        return tail(self.base / "gateway.log") + "\n" + tail(self.base / "worker.log")


def _enrol(url: str, root: Path, name: str, timeout_s: float = 180.0) -> dict:
    response = httpx.post(
        url + "/enroll-object",
        data={"object": name, "holdout_fraction": "0.2"},
        files={"archive": (f"{name}.zip", mvtec_zip(root, name))},
        timeout=60,
    )
    assert response.status_code == 202, response.text
    job_url = response.json()["status_url"]

    def finished() -> dict | None:
        job = httpx.get(job_url, timeout=5).json()
        return job if job["status"] not in ("queued", "running") else None

    job = wait_until(finished, timeout_s, 0.3, f"enrolment of {name}")
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, objects=3, size=64, n_train=10, n_validation=2, n_test=6, seed=1)
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, synthetic: Path) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    server = start_redis(base / "redis")
    env = tiny_env(base / "data", server.url)
    worker = start_worker(env, base / "worker.log")
    gateway, url = start_gateway(env, base / "gateway.log")
    try:
        wait_until(lambda: http_ready(url) or gateway.poll() is not None, 120, 0.3, "the gateway")
        assert gateway.poll() is None, tail(base / "gateway.log")
        v1 = _enrol(url, synthetic, "disc")["version"]
        v2 = _enrol(url, synthetic, "ring")["version"]
        stack = Stack(base, base / "data", server, worker, gateway, url, v1, v2)
        wait_until(lambda: stack.serving() == v2, 15, 0.1, "the gateway to serve v2")
        yield stack
    finally:
        stop_process(gateway)
        stop_process(worker)
        server.stop()


def _part(root: Path, name: str, kind: str = "good", index: int = 0) -> dict:
    rgb = sorted((root / name / "test" / kind / "rgb").glob("*.png"))[index]
    depth = rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff"
    return {"rgb": ("part.png", rgb.read_bytes()), "depth": ("part.tiff", depth.read_bytes())}


class Inspectors:
    """`count` clients inspecting continuously; records (start time, status, model_version) per client."""

    def __init__(self, url: str, files: dict, count: int) -> None:
        self.url, self.files = url, files
        self.results: list[list[tuple[float, int, str | None]]] = [[] for _ in range(count)]
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def _run(self, slot: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    response = client.post(
                        "/inspect", data={"object": "disc", "mask": "none"}, files=self.files
                    )
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    self.results[slot].append((started, response.status_code, version))
                except httpx.HTTPError as error:
                    self.results[slot].append((started, -1, repr(error)))

    def __enter__(self) -> Inspectors:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    @property
    def all(self) -> list[tuple[float, int, str | None]]:
        return [result for results in self.results for result in results]


def test_hot_swap_under_load(stack: Stack, synthetic: Path) -> None:
    stack.activate_and_wait(stack.v2)
    with Inspectors(stack.url, _part(synthetic, "disc"), 8) as load:
        time.sleep(1.5)
        stack.registry.activate(stack.v1, reason="swap under load")
        wait_until(lambda: stack.serving() == stack.v1, 10, 0.05, "the swap")
        swapped_at = time.monotonic()
        time.sleep(1.5)
    results = load.all
    failures = [result for result in results if result[1] != 200]
    assert not failures, (failures[:5], stack.logs())
    assert {version for _, _, version in results} == {stack.v1, stack.v2}
    assert all(version == stack.v1 for started, _, version in results if started > swapped_at)
    for client in load.results:  # per client: once the new version answered, the old one never does again
        versions = [version for _, _, version in client]
        assert versions == sorted(versions, key=lambda v: v == stack.v1)
    assert len(results) > 16


def test_corrupt_version_is_refused_and_the_old_one_keeps_serving(stack: Stack, synthetic: Path) -> None:
    stack.activate_and_wait(stack.v2)
    corrupt = "v29990101T000000-broken"
    shutil.copytree(stack.data / "models" / stack.v2, stack.data / "models" / corrupt)
    weights = stack.data / "models" / corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated on disk
    refused = httpx.post(f"{stack.url}/models/{corrupt}/activate")
    assert refused.status_code == 422 and "corrupt" in refused.json()["error"]["message"]

    stack.registry.activate(corrupt, reason="bypass the check, as if the disk broke after activation")

    def load_failed() -> dict | None:
        body = httpx.get(stack.url + "/readyz", timeout=2).json()
        return body if body.get("last_load_error") else None

    body = wait_until(load_failed, 10, 0.1, "the failed load to show in /readyz")
    assert "sha256" in body["last_load_error"]["message"] and body["model_version"] == stack.v2
    response = httpx.post(stack.url + "/inspect", data={"object": "ring"}, files=_part(synthetic, "ring"))
    assert response.status_code == 200 and response.json()["model_version"] == stack.v2
    metrics = httpx.get(stack.url + "/metrics").text
    assert "iumad_model_load_failing 1.0" in metrics

    stack.activate_and_wait(stack.v1)  # a good version after a bad one loads normally
    assert httpx.get(stack.url + "/readyz").json()["last_load_error"] is None


def test_a_stopped_gateway_catches_up_when_it_returns(stack: Stack) -> None:
    stack.activate_and_wait(stack.v2)
    os.kill(stack.gateway.pid, signal.SIGSTOP)
    try:
        stack.registry.activate(stack.v1, reason="activated while the gateway was stopped")
        time.sleep(1.5)
    finally:
        os.kill(stack.gateway.pid, signal.SIGCONT)
    started = time.monotonic()
    wait_until(lambda: stack.serving() == stack.v1, 10, 0.05, "the gateway to catch up")
    assert time.monotonic() - started < 5


def test_redis_restart_while_serving(stack: Stack, synthetic: Path) -> None:
    stack.activate_and_wait(stack.v2)
    with Inspectors(stack.url, _part(synthetic, "disc"), 2) as load:
        time.sleep(0.5)
        stack.redis_server.kill()  # a crash; the append-only file keeps queue, pointer and events
        down_at = time.monotonic()
        time.sleep(1.0)
        refused = httpx.post(
            stack.url + "/enroll-object",
            data={"object": "tile"},
            files={"archive": ("tile.zip", mvtec_zip(synthetic, "tile"))},
            timeout=30,
        )
        jobs = httpx.get(stack.url + "/jobs", timeout=30)
        ready = httpx.get(stack.url + "/readyz", timeout=30)
        time.sleep(1.0)
        stack.redis_server.start()
        up_at = time.monotonic()
        time.sleep(1.0)
    assert refused.status_code == 503 and "Redis is unreachable" in refused.json()["error"]["message"]
    assert refused.headers.get("retry-after")
    assert jobs.status_code == 503 and ready.status_code == 200
    during = [result for result in load.all if down_at < result[0] < up_at]
    assert during and all(status == 200 for _, status, _ in during), during[:5]
    assert all(status == 200 for _, status, _ in load.all), stack.logs()
    assert not (stack.data / "samples" / "tile").exists()

    # Everything resumes without restarting our processes: enrol, train, activate, swap.
    wait_for_redis(connect_redis(stack.redis_server.url), timeout_s=10.0)
    job = _enrol(stack.url, synthetic, "tile")
    wait_until(lambda: stack.serving() == job["version"], 15, 0.1, "the gateway to serve the new version")
    assert stack.gateway.poll() is None and stack.worker.poll() is None


def test_embedded_services_restart_and_clean_up(tmp_path: Path) -> None:
    leftover = RedisServerProcess(tmp_path / "redis")
    leftover.start()  # as if a gateway had been killed and left its Redis running
    leftover_pid = leftover.process.pid
    services = EmbeddedServices(tmp_path, start_worker=True)
    url = services.start()
    try:
        assert not Path(f"/proc/{leftover_pid}").exists() or _zombie(leftover_pid)
        client = Redis.from_url(url)
        client.set("k", "v")
        services.redis.kill()  # the supervisor restarts it, and the data survives (append-only file)
        wait_until(lambda: _ping(client), 15, 0.2, "the embedded Redis to come back")
        assert client.get("k") == b"v"
        worker = services.worker.process
        assert worker is not None and worker.poll() is None
    finally:
        services.stop()
    assert not services.redis.alive() and worker.poll() is not None


def _ping(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
