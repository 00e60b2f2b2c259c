"""Safe defaults once the service leaves loopback: no code from Redis, no password-less Redis."""

from __future__ import annotations

import json
import pickle
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import AuthenticationError, ResponseError
from rq.exceptions import DeserializationError
from rq.job import Job

from core.settings import Settings, redacted_url
from iumad.embedded import UNIX_SOCKET_MAX, RedisServerProcess
from store.job_spec import EnrolmentSpec
from store.job_store import JOB_SERIALIZER
from store.queue import enqueue_enrolment


@pytest.fixture
def redis(redis_server: RedisServerProcess) -> Iterator[Redis]:
    client = Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


class _Touch:
    """Unpickling this creates a file: the proof that a pickle would have run code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_enrolment_jobs_travel_as_json(redis: Redis, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis_url="redis://unused")
    spec = EnrolmentSpec("alpha", "job-json", max_minutes=1.0)
    enqueue_enrolment(redis, settings, "job-json", spec)
    data = json.loads(zlib.decompress(redis.hget("rq:job:job-json", "data")))
    assert data[0] == "workers.jobs.enroll_object" and data[2] == [spec.to_dict()]
    assert EnrolmentSpec.from_dict(data[2][0]) == spec


def test_a_pickled_job_planted_in_redis_is_refused_without_running_it(redis: Redis, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    planted = zlib.compress(pickle.dumps(("builtins.print", None, (_Touch(marker),), {})))
    redis.hset(
        "rq:job:planted", mapping={"data": planted, "status": "queued", "created_at": "2026-01-01T00:00:00Z"}
    )
    job = Job.fetch("planted", connection=redis, serializer=JOB_SERIALIZER)
    with pytest.raises(DeserializationError):
        job.args  # noqa: B018 - reading the arguments is what would unpickle them
    assert not marker.exists()


def test_the_embedded_redis_on_tcp_takes_a_password_kept_off_the_command_line(tmp_path: Path) -> None:
    server = RedisServerProcess(tmp_path / "tcp", use_unix_socket=False)
    server.start()
    try:
        anonymous = Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
        with pytest.raises((AuthenticationError, ResponseError)):
            anonymous.ping()
        assert Redis.from_url(server.url).ping()
        command_line = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert server.password.encode() not in command_line
        assert server.password not in redacted_url(server.url)
        assert oct(server.auth_config_file.stat().st_mode & 0o777) == "0o600"
    finally:
        server.stop()


def test_a_data_folder_too_deep_for_a_socket_still_gets_a_private_socket_not_tcp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (UNIX_SOCKET_MAX - len(str(tmp_path))))
    server = RedisServerProcess(deep / "redis")
    server.start()
    try:
        assert server.url.startswith("unix://") and server.port == 0 and server.password is None
        assert oct(server.socket_path.parent.stat().st_mode & 0o777) == "0o700"
        assert Redis.from_url(server.url).ping()
        assert (deep / "redis" / "redis.pid").exists()  # its files stay in the data folder
    finally:
        server.stop()
    assert not server.socket_path.parent.exists()
