"""The operator's correction loop over HTTP with real processes: inspect, mark false rejects good and
report a missed defect, refine the object on the worker, and find every other object unchanged.

A private `redis-server`, `iumad worker` and `iumad serve` keeping rejected parts' images (tiny
model settings, 64 px synthetic parts, as test_enrolment_e2e.py).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_processes import (
    http_ready,
    mvtec_zip,
    part_files,
    start_gateway,
    start_redis,
    start_worker,
    stop_process,
    tail,
    tiny_env,
    wait_until,
)

from model.data.decode import read_depth, read_rgb
from model.data.synthetic import write_synthetic_dataset
from workers.forgetting_guard import paste_defect

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    base: Path
    url: str
    gateway: subprocess.Popen
    worker: subprocess.Popen

    def logs(self) -> str:
        return "\n".join(tail(self.base / name) for name in ("gateway.log", "worker.log"))

    def wait(self, job_id: str, timeout_s: float = 180.0) -> dict:
        def finished() -> dict | None:
            job = httpx.get(f"{self.url}/jobs/{job_id}", timeout=5).json()
            return job if job["status"] not in ("queued", "running") else None

        try:
            return wait_until(finished, timeout_s, 0.3, f"job {job_id}")
        except AssertionError:
            print(self.logs())
            raise

    def wait_serving(self, version: str) -> None:
        wait_until(
            lambda: httpx.get(self.url + "/readyz", timeout=5).json().get("model_version") == version,
            30,
            0.2,
            f"serving {version}",
        )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, objects=2, size=64, n_train=12, n_validation=4, n_test=16, seed=5)
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("refine")
    server = start_redis(base / "redis")
    env = tiny_env(base / "data", server.url, IUMAD_KEEP_REJECTED_IMAGES="true")
    gateway, url = start_gateway(env, base / "gateway.log")
    worker = start_worker(env, base / "worker.log")
    try:
        wait_until(lambda: http_ready(url) or gateway.poll() is not None, 120, 0.3, "the gateway")
        assert gateway.poll() is None, tail(base / "gateway.log")
        yield Stack(base, url, gateway, worker)
    finally:
        stop_process(worker)
        stop_process(gateway)
        server.stop()


def _parts(root: Path, name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    paths = sorted((root / name / "test" / "good" / "rgb").glob("*.png"))
    return [(read_rgb(p), read_depth(p.parent.parent / "xyz" / f"{p.stem}.tiff")) for p in paths]


def _inspect(stack: Stack, name: str, rgb, depth, threshold: str | None = None) -> dict:
    fields = {"object": name, "mask": "none"} | ({"threshold": threshold} if threshold else {})
    response = httpx.post(stack.url + "/inspect", data=fields, files=part_files(rgb, depth), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_corrections_refine_one_object_and_leave_the_other_untouched(stack: Stack, synthetic: Path) -> None:
    names = sorted(p.name for p in synthetic.iterdir() if p.is_dir())
    refined_name, other_name = names
    for name in names:
        response = httpx.post(
            stack.url + "/enroll-object",
            data={"object": name},
            files={"archive": (f"{name}.zip", mvtec_zip(synthetic, name))},
            timeout=60,
        )
        assert response.status_code == 202, response.text
        assert stack.wait(response.json()["job_id"])["status"] == "succeeded"
    version = httpx.get(stack.url + "/models/active", timeout=5).json()["version"]
    stack.wait_serving(version)

    parts = _parts(synthetic, refined_name)
    assert len(parts) >= 5
    for rgb, depth in parts[:4]:  # false rejects: normal parts failed by a threshold under any score
        answer = _inspect(stack, refined_name, rgb, depth, threshold="-1000")
        marked = httpx.post(
            f"{stack.url}/inspections/{answer['request_id']}/feedback", json={"verdict": "good"}
        )
        assert marked.status_code == 200 and marked.json()["kind"] == "false_reject", marked.text
    rgb, depth = parts[4]
    defect = paste_defect(rgb, depth, "colour", np.random.default_rng(0))
    missed = _inspect(stack, refined_name, defect.rgb, defect.depth, threshold="1000")
    reported = httpx.post(
        f"{stack.url}/inspections/{missed['request_id']}/feedback",
        data={"verdict": "defective"},
        files=part_files(defect.rgb, defect.depth),
    )
    assert reported.status_code == 200 and reported.json()["kind"] == "missed_defect", reported.text
    pending = httpx.get(f"{stack.url}/objects/{refined_name}/feedback").json()
    assert pending["counts"] == {"good": 4, "defective": 1}

    other_parts = _parts(synthetic, other_name)[:2]
    other_before = [_inspect(stack, other_name, *part) for part in other_parts]

    started = httpx.post(f"{stack.url}/objects/{refined_name}/refine", json={})
    assert started.status_code == 202, started.text
    assert started.json()["kind"] == "refinement"
    assert httpx.post(f"{stack.url}/objects/{refined_name}/refine").status_code == 409  # reserved
    job = stack.wait(started.json()["job_id"])
    assert job["status"] == "succeeded", job["message"]
    assert job["parent"] == version and "refined" in job["message"]
    rates = job["metrics"]["refinement"]
    assert len(rates["before"]["good_scores"]) == 4 and len(rates["after"]["defect_scores"]) == 1
    stack.wait_serving(job["version"])

    other_after = [_inspect(stack, other_name, *part) for part in other_parts]
    assert [a["raw_score"] for a in other_after] == [b["raw_score"] for b in other_before]
    assert [a["threshold"] for a in other_after] == [b["threshold"] for b in other_before]
    refined = httpx.get(f"{stack.url}/objects/{refined_name}", timeout=5).json()
    assert refined["calibration"]["refined_in"] == job["version"]
    assert httpx.get(f"{stack.url}/objects/{refined_name}/feedback").json()["pending"] == []
    again = httpx.post(f"{stack.url}/objects/{refined_name}/refine")
    assert again.status_code == 409 and "no pending corrections" in again.json()["error"]["message"]
    metrics = httpx.get(stack.url + "/metrics").text
    assert f'iumad_corrections_total{{object="{refined_name}",verdict="good"}} 4.0' in metrics
