"""End to end over HTTP with real processes: enrol two objects, inspect them, roll back, cancel a job,
and kill the worker in the middle of training.

A private `redis-server`, `iumad worker` and `iumad serve` (tiny model settings, 64 px synthetic parts).
The tiny model trains for seconds and misses the benchmark's subtle defects at 64 px, so detection is
checked on clearly visible pasted defects (the forgetting guard's paster) next to the normal parts,
with pass/flag rates asserted for the base object and better-than-chance ordering for the second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
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

from iumad.embedded import RedisServerProcess
from model.data.decode import read_depth, read_rgb
from model.data.synthetic import write_synthetic_dataset
from model.evaluation.metrics import image_auroc
from workers.forgetting_guard import paste_defect

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    base: Path
    env: dict[str, str]
    redis_server: RedisServerProcess
    gateway: subprocess.Popen
    url: str
    workers: list[subprocess.Popen] = field(default_factory=list)

    def start_worker(self, **env: str) -> subprocess.Popen:
        worker = start_worker({**self.env, **env}, self.base / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def logs(self) -> str:
        parts = [tail(self.base / "gateway.log")]
        parts += [tail(self.base / f"worker-{i}.log") for i in range(len(self.workers))]
        return "\n".join(parts)

    def serving(self) -> str | None:
        return httpx.get(self.url + "/readyz", timeout=5).json().get("model_version")

    def wait_for_stage(self, job_id: str, stage: str, timeout_s: float = 90.0) -> None:
        try:
            wait_until(lambda: self.job(job_id)["stage"] == stage, timeout_s, 0.2, f"stage {stage}")
        except AssertionError:
            print(self.job(job_id), self.logs())
            raise

    def job(self, job_id: str) -> dict:
        return httpx.get(f"{self.url}/jobs/{job_id}", timeout=5).json()

    def enrol(self, root: Path, name: str, **fields: str) -> str:
        response = httpx.post(
            self.url + "/enroll-object",
            data={"object": name, **fields},
            files={"archive": (f"{name}.zip", mvtec_zip(root, name))},
            timeout=60,
        )
        assert response.status_code == 202, response.text
        return response.json()["job_id"]

    def watch(self, job_id: str, timeout_s: float = 180.0) -> tuple[dict, list[tuple[str, float]]]:
        """Poll until the job ends; returns the final record and the (stage, progress) seen."""
        seen: list[tuple[str, float]] = []

        def finished() -> dict | None:
            job = self.job(job_id)
            seen.append((job["stage"], job["progress"]))
            return job if job["status"] not in ("queued", "running") else None

        try:
            return wait_until(finished, timeout_s, 0.2, f"job {job_id}"), seen
        except AssertionError:
            print(self.logs())
            raise


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, objects=2, size=64, n_train=12, n_validation=4, n_test=12, seed=3)
    return root


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("e2e")
    server = start_redis(base / "redis")
    env = tiny_env(base / "data", server.url)
    gateway, url = start_gateway(env, base / "gateway.log")
    stack = Stack(base, env, server, gateway, url)
    try:
        wait_until(lambda: http_ready(url) or gateway.poll() is not None, 120, 0.3, "the gateway")
        assert gateway.poll() is None, tail(base / "gateway.log")
        yield stack
    finally:
        for worker in stack.workers:
            stop_process(worker)
        stop_process(gateway)
        server.stop()


def _inspect_normal_and_defective(url: str, root: Path, name: str) -> tuple[np.ndarray, list[dict]]:
    """The test split's normal parts, and each with a clearly visible pasted defect (colour, dent)."""
    labels, answers = [], []
    for index, path in enumerate(sorted((root / name / "test" / "good" / "rgb").glob("*.png"))):
        rgb, depth = read_rgb(path), read_depth(path.parent.parent / "xyz" / f"{path.stem}.tiff")
        parts = [(False, rgb, depth)]
        for variant, kind in enumerate(("colour", "colour_dent")):
            defect = paste_defect(rgb, depth, kind, np.random.default_rng([index, variant]))
            parts.append((True, defect.rgb, defect.depth))
        for defective, part_rgb, part_depth in parts:
            response = httpx.post(
                url + "/inspect",
                data={"object": name, "mask": "none"},
                files=part_files(part_rgb, part_depth),
                timeout=30,
            )
            assert response.status_code == 200, response.text
            labels.append(defective)
            answers.append(response.json())
    return np.array(labels), answers


def test_enrol_two_objects_inspect_and_roll_back(stack: Stack, synthetic: Path) -> None:
    stack.start_worker()
    disc_job = stack.enrol(synthetic, "disc", holdout_fraction="0.25")
    disc, seen = stack.watch(disc_job)
    assert disc["status"] == "succeeded", disc
    progress = [fraction for _, fraction in seen]
    assert progress == sorted(progress) and progress[-1] == 1.0
    ring, _ = stack.watch(stack.enrol(synthetic, "ring", holdout_fraction="0.25"))
    assert ring["status"] == "succeeded" and ring["parent"] == disc["version"], ring
    assert ring["forgetting_guard"]["passed"] and ring["forgetting_guard"]["objects"][0]["object"] == "disc"
    assert ring["version_active"]
    job_url = f"{stack.url}/jobs/{ring['job_id']}"
    wait_until(lambda: httpx.get(job_url).json()["version_serving"], 10, 0.1, "the job to say it serves")
    assert stack.serving() == ring["version"]

    for name in ("disc", "ring"):
        truth, answers = _inspect_normal_and_defective(stack.url, synthetic, name)
        assert {answer["model_version"] for answer in answers} == {ring["version"]}
        scores = np.array([answer["score"] for answer in answers])
        flagged = np.array([answer["is_anomalous"] for answer in answers])
        assert np.array_equal(flagged, scores > 0.5)
        assert scores[truth].mean() > scores[~truth].mean() and image_auroc(truth, scores) > 0.5, (
            name,
            scores,
        )
        if name == "disc":  # the first object, after an incremental step: learnt well and not forgotten
            assert image_auroc(truth, scores) >= 0.75, (name, scores, truth)
            assert flagged[truth].mean() >= 0.25, (name, scores, truth)  # anomalous parts flagged
            assert (~flagged[~truth]).mean() >= 0.5, (name, scores, truth)  # normal parts pass

    versions = httpx.get(stack.url + "/models").json()
    assert {model["version"] for model in versions["models"]} == {disc["version"], ring["version"]}
    rollback = httpx.post(f"{stack.url}/models/{disc['version']}/activate")
    assert rollback.status_code == 200, rollback.text
    wait_until(lambda: stack.serving() == disc["version"], 5, 0.05, "the rollback to serve")
    superseded = httpx.get(job_url).json()
    assert superseded["status"] == "succeeded" and not superseded["version_active"]
    assert not superseded["version_serving"]
    gone = httpx.post(
        stack.url + "/inspect",
        data={"object": "ring"},
        files={"rgb": next((synthetic / "ring" / "test" / "good" / "rgb").iterdir()).read_bytes()},
    )
    assert gone.status_code == 404, gone.text

    metrics = httpx.get(stack.url + "/metrics").text
    assert 'iumad_enrolment_uploads_total{outcome="accepted"} 2.0' in metrics
    wait_until(
        lambda: 'iumad_jobs{state="succeeded"} 2.0' in httpx.get(stack.url + "/metrics").text,
        15,
        0.5,
        "the job metrics",
    )


def test_cancel_a_running_job(stack: Stack, synthetic: Path) -> None:
    for worker in stack.workers:
        stop_process(worker)
    stack.start_worker(IUMAD_TRAIN_EPOCHS="100000")  # a job that would train for its whole budget
    before = stack.serving()
    job_id = stack.enrol(synthetic, "ring", max_minutes="1", replace="true")
    stack.wait_for_stage(job_id, "training")
    response = httpx.post(f"{stack.url}/jobs/{job_id}/cancel")
    assert response.status_code == 200 and response.json()["cancel_requested"]
    job, _ = stack.watch(job_id, 20)
    assert job["status"] == "canceled" and "active model is unchanged" in job["message"]
    assert stack.serving() == before
    assert httpx.post(f"{stack.url}/jobs/{job_id}/cancel").status_code == 409


def test_worker_killed_mid_training_then_retried_without_a_second_upload(
    stack: Stack, synthetic: Path
) -> None:
    worker = stack.workers[-1]
    assert worker.poll() is None
    before = stack.serving()
    versions_before = sorted(p.name for p in (stack.base / "data" / "models").iterdir())
    job_id = stack.enrol(synthetic, "ring", max_minutes="1")
    stack.wait_for_stage(job_id, "training")
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    job, _ = stack.watch(job_id, 30)
    assert job["status"] == "failed", job
    assert "training" in job["message"] and "active model is unchanged" in job["message"]
    assert stack.serving() == before
    assert sorted(p.name for p in (stack.base / "data" / "models").iterdir()) == versions_before

    stack.start_worker()
    retry = httpx.post(f"{stack.url}/jobs/{job_id}/retry", timeout=30)
    assert retry.status_code == 202, retry.text
    retried, _ = stack.watch(retry.json()["job_id"])
    assert retried["status"] == "succeeded" and retried["options"]["retry_of"] == job_id, retried
    wait_until(lambda: stack.serving() == retried["version"], 30, 0.2, "the retried version serving")


def test_demo_against_an_embedded_service(tmp_path: Path) -> None:
    """`iumad serve` with no Redis URL (embedded Redis + worker), then `iumad demo` against it."""
    env = tiny_env(tmp_path / "data", None)
    gateway, url = start_gateway(env, tmp_path / "gateway.log")
    try:
        wait_until(lambda: http_ready(url) or gateway.poll() is not None, 120, 0.3, "the gateway")
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "iumad.cli",
                "demo",
                "--url",
                url,
                "--out",
                str(tmp_path / "demo"),
                "--size",
                "64",
                "--train",
                "10",
                "--parts",
                "4",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert demo.returncode == 0, demo.stdout + demo.stderr + tail(tmp_path / "gateway.log")
        assert "HTTP Request" not in demo.stdout + demo.stderr, (
            "httpx's request log is shown only with --verbose"
        )
        table = [line.split() for line in demo.stdout.split("model version")[-1].splitlines()]
        rows = [row for row in table if row and row[0] in ("disc", "ring")]
        assert len(rows) == 8 and {row[2] for row in rows} <= {"pass", "FAIL"}, demo.stdout
        assert len(list((tmp_path / "demo" / "overlays").glob("*.png"))) == 8
        assert (tmp_path / "data" / "redis" / "appendonly.aof").exists()
    finally:
        stop_process(gateway)
    assert gateway.returncode == 0
