"""The model registry and job records against a real (private) Redis server."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from tiny_model import train_tiny

from iumad.embedded import RedisServerProcess
from model.checkpoint import save_version
from model.errors import NotFoundError
from store.job_store import JobStore
from store.registry import ModelRegistry, StaleActivationError


@pytest.fixture
def redis(redis_server: RedisServerProcess) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three complete versions (v1, v2, v3) and one half-written staging directory."""
    directory = tmp_path_factory.mktemp("models")
    result = train_tiny(("alpha",))
    for name in ("v1", "v2", "v3"):
        save_version(
            result.net, dataclasses.replace(result.manifest, version=name, metrics={}), directory / name
        )
    (directory / ".tmp-v4-abc").mkdir()
    (directory / ".tmp-v4-abc" / "model.safetensors").write_bytes(b"partial")
    return directory


def test_activation_sequence_history_and_events(redis: Redis, models_dir: Path) -> None:
    registry = ModelRegistry(redis, models_dir)
    assert registry.active() is None
    start = registry.last_event_id()
    first = registry.activate("v1", expected_sequence=0, reason="enrolled alpha")
    assert (first.version, first.sequence) == ("v1", 1)
    second = registry.activate("v2", expected_sequence=1)
    assert (second.version, second.sequence, second.previous) == ("v2", 2, "v1")
    events = registry.read_events(start, block_ms=None)
    assert [(event.version, event.sequence) for event in events] == [("v1", 1), ("v2", 2)]
    assert registry.read_events(events[-1].id, block_ms=None) == []
    assert [entry["version"] for entry in registry.history()] == ["v2", "v1"]
    assert registry.previous_version() == "v1"
    rolled_back = registry.activate(registry.previous_version(), reason="rollback")
    assert (rolled_back.version, rolled_back.sequence) == ("v1", 3)


def test_an_activation_records_the_job_that_made_it_and_a_kill_reads_that_not_the_reason(
    redis: Redis, models_dir: Path
) -> None:
    from store.queue import hard_cancel_message

    registry = ModelRegistry(redis, models_dir)
    registry.activate("v1", reason="any words at all", job_id="job-a")
    active = registry.active()
    assert active.job_id == "job-a" and registry.history()[0]["job_id"] == "job-a"
    assert active.activated_by("job-a") and not active.activated_by("job-b")
    assert "after it had activated version v1" in hard_cancel_message(active, "job-a", 5)
    registry.activate("v2", reason="enrolled alpha (job job-b)")  # an operator's, whatever it says
    operator = registry.active()
    assert operator.job_id is None and not operator.activated_by("job-b")
    assert hard_cancel_message(operator, "job-b", 5).endswith("the active model is unchanged")


def test_stale_writer_loses(redis: Redis, models_dir: Path) -> None:
    registry = ModelRegistry(redis, models_dir)
    registry.activate("v1")
    seen = registry.active()
    registry.activate("v3", reason="operator rollback while a job trained")
    with pytest.raises(StaleActivationError):
        registry.activate("v2", expected_sequence=seen.sequence)
    assert registry.active().version == "v3"


def test_concurrent_activations_never_share_a_sequence(redis: Redis, models_dir: Path) -> None:
    registry = ModelRegistry(redis, models_dir)
    results: list[int] = []

    def activate(version: str) -> None:
        for _ in range(10):
            results.append(registry.activate(version).sequence)

    threads = [threading.Thread(target=activate, args=(v,)) for v in ("v1", "v2", "v3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(1, 31))
    assert registry.active().sequence == 30


def test_unknown_partial_and_malicious_versions_are_refused(redis: Redis, models_dir: Path) -> None:
    registry = ModelRegistry(redis, models_dir)
    with pytest.raises(NotFoundError):
        registry.activate("v9")
    for bad in (".tmp-v4-abc", "../v1", "v1/../../etc", "", "a" * 200):
        with pytest.raises(Exception, match="not a valid model version"):
            registry.activate(bad)
    assert registry.active() is None


def test_list_versions_hides_staging_and_marks_active(redis: Redis, models_dir: Path) -> None:
    registry = ModelRegistry(redis, models_dir)
    registry.activate("v2")
    listed = {info.version: info.status for info in registry.list_versions()}
    assert listed == {"v1": "available", "v2": "active", "v3": "available"}


def test_job_records_reconcile_a_silent_worker(redis: Redis) -> None:
    store = JobStore(redis, heartbeat_timeout_s=0.5)
    store.create("job-1", "alpha", False, {"train_samples": 5}, {})
    assert store.get("job-1").status == "queued"  # no rq job yet, but within the enqueue grace period
    from rq import Queue

    from store.job_store import JOB_SERIALIZER

    Queue("test", connection=redis, serializer=JOB_SERIALIZER).enqueue("builtins.print", job_id="job-1")
    store.update("job-1", status="running", stage="training", heartbeat_at=0.0)
    record = store.get("job-1")
    assert record.status == "failed" and "stopped responding during 'training'" in record.message
    assert not store.update("job-1", status="running"), "a finished record is final"
    assert store.get("job-1").status == "failed"
    assert [job.id for job in store.list()] == ["job-1"]


def test_a_hard_cancel_after_its_activation_says_the_model_changed() -> None:
    from store.queue import hard_cancel_message
    from store.registry import ActiveVersion

    own = ActiveVersion("v7", 7, 0.0, "enrolled ring", previous="v6", job_id="abc123")
    other = ActiveVersion("v7", 7, 0.0, "enrolled ring", previous="v6", job_id="zzz999")
    said = hard_cancel_message(own, "abc123", 10.0)
    assert "activated version v7, which is now serving" in said and "POST /models/v6/activate" in said
    assert "unchanged" not in said
    assert hard_cancel_message(other, "abc123", 10.0).endswith("the active model is unchanged")
    assert hard_cancel_message(None, "abc123", 10.0).endswith("the active model is unchanged")
