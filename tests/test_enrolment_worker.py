"""The training worker end to end with a real Redis and real worker processes (no gateway).

Covers: ordered base + incremental steps with the forgetting guard, a guard failure (needs_review,
not activated), cooperative cancel, and SIGKILL of the worker in the middle of training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from redis import Redis
from service_processes import mvtec_zip, start_redis, start_worker, stop_process, tail, tiny_env, wait_until

from core.settings import Settings
from iumad.embedded import RedisServerProcess
from model.checkpoint import read_manifest
from store.ingest import IngestLimits, ingest_archive
from store.job_spec import EnrolmentSpec
from store.job_store import JobRecord, JobStore
from store.queue import new_job_id, submit_enrolment
from store.registry import ModelRegistry

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    """A private Redis, a data directory and the workers started on them."""

    base: Path
    server: RedisServerProcess
    settings: Settings
    redis: Redis
    workers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def store(self) -> JobStore:
        return JobStore(self.redis, heartbeat_timeout_s=6.0)

    @property
    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.redis, self.settings.models_dir)

    def start_worker(self, **env: str) -> subprocess.Popen:
        worker = start_worker(
            tiny_env(self.settings.data_dir, self.server.url, **env),
            self.base / f"worker-{len(self.workers)}.log",
        )
        self.workers.append(worker)
        return worker

    def enrol(self, synthetic_root: Path, name: str, **options: object) -> str:
        archive = self.base / f"{name}-{time.monotonic_ns()}.zip"
        archive.write_bytes(mvtec_zip(synthetic_root, name))
        job_id = new_job_id()
        stored = ingest_archive(
            archive,
            self.base / "work" / job_id,
            name,
            job_id,
            self.settings.samples_dir,
            0.25,
            IngestLimits.from_settings(self.settings),
        )
        spec = EnrolmentSpec.from_dict(
            {"max_minutes": 2.0, **options, "object": name, "enrolment_id": job_id}
        )
        submit_enrolment(JobStore.for_settings(self.redis, self.settings), self.settings, stored, spec)
        return job_id

    def wait(self, job_id: str, timeout_s: float = 120.0) -> JobRecord:
        def finished() -> JobRecord | None:
            record = self.store.get(job_id)
            return record if record is not None and record.finished else None

        try:
            return wait_until(finished, timeout_s, 0.3, f"job {job_id}")
        except AssertionError:
            print("\n".join(tail(self.base / f"worker-{i}.log") for i in range(len(self.workers))))
            raise

    def versions_on_disk(self) -> list[str]:
        return (
            sorted(p.name for p in self.settings.models_dir.iterdir())
            if self.settings.models_dir.exists()
            else []
        )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    server = start_redis(tmp_path / "redis")
    settings = Settings(
        data_dir=tmp_path / "data", redis_url=server.url, min_enroll_samples=5, min_holdout_samples=2
    )
    client = Redis.from_url(server.url)
    stack = Stack(tmp_path, server, settings, client)
    yield stack
    for worker in stack.workers:
        stop_process(worker, 10)
    client.close()
    server.stop()


def test_enrolments_apply_in_order_with_the_forgetting_guard(stack: Stack, synthetic_root: Path) -> None:
    stack.start_worker()
    first = stack.enrol(synthetic_root, "disc")
    second = stack.enrol(synthetic_root, "ring")  # queued behind the first; must start from its version
    disc, ring = stack.wait(first), stack.wait(second)
    assert (disc.status, ring.status) == ("succeeded", "succeeded"), (disc.message, ring.message)
    assert ring.parent == disc.version and stack.registry.active().version == ring.version
    manifest = read_manifest(stack.settings.models_dir / ring.version)
    assert [record.name for record in manifest.objects] == ["disc", "ring"]
    assert manifest.training["samples"] == {"disc": f"disc/{first}", "ring": f"ring/{second}"}
    guard = ring.guard
    assert guard["passed"] and [item["object"] for item in guard["objects"]] == ["disc"]
    assert guard["objects"][0]["defects"] == 2 * guard["objects"][0]["normals"] > 0
    assert ring.metrics["object"]["threshold"] is not None and ring.progress == 1.0
    assert {"features_s", "training_s", "calibration_s", "guard_s", "save_s", "total_s"} <= set(ring.timings)
    assert [entry["version"] for entry in stack.registry.history()] == [ring.version, disc.version]

    again = stack.wait(stack.enrol(synthetic_root, "disc"))
    assert (
        again.status == "failed" and "already enrolled" in again.message and "replace=true" in again.message
    )
    assert stack.registry.active().version == ring.version


def test_guard_failure_saves_the_candidate_but_does_not_activate(stack: Stack, synthetic_root: Path) -> None:
    stack.start_worker(IUMAD_FORGETTING_MARGIN="-1")  # every drop (even 0) is "too much"
    base = stack.wait(stack.enrol(synthetic_root, "disc"))
    assert base.status == "succeeded"
    record = stack.wait(stack.enrol(synthetic_root, "ring"))
    assert record.status == "needs_review", record.message
    assert f"POST /models/{record.version}/activate" in record.message
    assert stack.registry.active().version == base.version
    statuses = {info.version: info.status for info in stack.registry.list_versions()}
    assert statuses == {base.version: "active", record.version: "needs_review"}


def test_cancel_stops_training_cooperatively(stack: Stack, synthetic_root: Path) -> None:
    stack.start_worker(IUMAD_TRAIN_EPOCHS="100000")
    job_id = stack.enrol(synthetic_root, "disc", max_minutes=1.0)
    wait_until(lambda: stack.store.get(job_id).stage == "training", 60, 0.2, "training to start")
    stack.store.request_cancel(job_id)
    record = stack.wait(job_id, 30)
    assert record.status == "canceled" and "active model is unchanged" in record.message
    assert stack.registry.active() is None and stack.versions_on_disk() == []
    assert not (stack.settings.samples_dir / "disc").exists(), "a canceled enrolment's samples are removed"


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def test_worker_killed_mid_training(stack: Stack, synthetic_root: Path) -> None:
    stack.start_worker()
    base = stack.wait(stack.enrol(synthetic_root, "disc"))
    assert base.status == "succeeded"
    stop_process(stack.workers.pop(), 10)
    worker = stack.start_worker(IUMAD_TRAIN_EPOCHS="100000")
    job_id = stack.enrol(synthetic_root, "ring", max_minutes=1.0)
    wait_until(lambda: stack.store.get(job_id).stage == "training", 60, 0.2, "training to start")
    horses = _children(worker.pid)
    assert horses, "the job runs in a forked work horse"
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in horses), 10, 0.1, "the horse to die")

    record = stack.wait(job_id, 30)
    assert record.status == "failed"
    assert (
        "stopped responding during 'training'" in record.message
        and "active model is unchanged" in record.message
    )
    assert stack.registry.active().version == base.version
    assert stack.versions_on_disk() == [base.version]

    # A new worker takes over the lineage at once (the dead holder's lock is broken) and trains.
    stack.start_worker()
    retry = stack.wait(stack.enrol(synthetic_root, "ring"), 60)
    assert retry.status == "succeeded" and retry.timings["wait_s"] < 10
    assert stack.registry.active().version == retry.version


def test_replace_rebuilds_from_stored_samples(stack: Stack, synthetic_root: Path) -> None:
    stack.start_worker()
    disc = stack.wait(stack.enrol(synthetic_root, "disc"))
    ring = stack.wait(stack.enrol(synthetic_root, "ring"))
    replaced = stack.wait(stack.enrol(synthetic_root, "ring", replace=True))
    assert (disc.status, ring.status, replaced.status) == ("succeeded",) * 3, replaced.message
    manifest = read_manifest(stack.settings.models_dir / replaced.version)
    assert manifest.training["kind"] == "rebuild" and manifest.parent == ring.version
    assert [record.name for record in manifest.objects] == ["disc", "ring"]
    assert manifest.training["samples"]["disc"] == f"disc/{disc.id}"
    assert manifest.training["samples"]["ring"] == f"ring/{replaced.id}"
    assert [item["object"] for item in replaced.guard["objects"]] == ["disc"]
    assert stack.registry.active().version == replaced.version


def test_hard_cancel_kills_the_work_horse(stack: Stack, synthetic_root: Path) -> None:
    from store.queue import hard_cancel

    worker = stack.start_worker(IUMAD_TRAIN_EPOCHS="100000")
    job_id = stack.enrol(synthetic_root, "disc", max_minutes=1.0)
    wait_until(lambda: stack.store.get(job_id).stage == "training", 60, 0.2, "training to start")
    horses = _children(worker.pid)
    # What the cancel route does when the grace period is over:
    hard_cancel(stack.store, stack.registry, stack.settings.samples_dir, job_id, 0.0)
    wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in horses), 15, 0.1, "the horse to die")
    record = stack.wait(job_id, 10)
    assert record.status == "canceled" and "killed" in record.message and "unchanged" in record.message
    assert stack.registry.active() is None and stack.versions_on_disk() == []
    assert not (stack.settings.samples_dir / "disc" / job_id).exists()  # the killed job's samples go too
    assert worker.poll() is None, "the worker itself survives and takes the next job"


def test_enrolment_training_options_follow_the_settings(tmp_path: Path) -> None:
    """The loop ends before the job's deadline, leaving the after-training reserve, with no epoch cap
    (the budget decides); the operator's epoch and anchor overrides apply (unset: the defaults)."""
    from model.training.options import TrainingOptions
    from workers.jobs import (
        AFTER_TRAINING_RESERVE_S,
        AFTER_TRAINING_RESERVE_SHARE,
        enrolment_training_options,
    )

    defaults = enrolment_training_options(Settings(data_dir=tmp_path), 1000.0, 1300.0)
    assert defaults.finish_by == 1300.0 - AFTER_TRAINING_RESERVE_S - AFTER_TRAINING_RESERVE_SHARE * 300.0
    assert defaults.max_seconds is None and defaults.epochs is None
    assert defaults.anchor_weight == TrainingOptions().anchor_weight == 1.0
    tuned = enrolment_training_options(
        Settings(data_dir=tmp_path, anchor_weight=0.1, train_epochs=7), 1000.0, 1010.0
    )
    assert (tuned.anchor_weight, tuned.epochs) == (0.1, 7)


def test_a_negative_anchor_weight_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="anchor_weight"):
        Settings(data_dir=tmp_path, anchor_weight=-1.0)
