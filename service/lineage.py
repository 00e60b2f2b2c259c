"""The gateway's handles on the model lineage in Redis (registry, job records), and Redis-down answers.

Inspection never needs Redis once a model is loaded; enrolment, jobs and activation always do. When
Redis cannot be reached those routes answer 503 with a message that says so and that inspection
goes on, instead of a 500 with a connection traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from iumad.settings import Settings
from service.errors import ServiceUnavailableError
from store.job_store import JobStore
from store.registry import ModelRegistry

REDIS_RETRY_AFTER_S = 5


def make_registry(redis: Redis, settings: Settings) -> ModelRegistry:
    return ModelRegistry(redis, settings.models_dir, settings.redis_key_prefix)


def make_job_store(redis: Redis, settings: Settings) -> JobStore:
    return JobStore(redis, settings.redis_key_prefix, settings.job_heartbeat_timeout_s)


def require_lineage(state: Any) -> tuple[ModelRegistry, JobStore]:
    """The registry and job store of a gateway connected to Redis, else 503."""
    registry = getattr(state, "registry", None)
    jobs = getattr(state, "jobs", None)
    if registry is None or jobs is None:
        raise ServiceUnavailableError("enrolment is unavailable: this gateway runs without Redis", 60)
    return registry, jobs


@contextmanager
def redis_or_503(action: str) -> Iterator[None]:
    try:
        yield
    except RedisError as error:
        raise ServiceUnavailableError(
            f"cannot {action}: Redis is unreachable ({type(error).__name__}); enrolment, jobs and activation "
            f"are unavailable until it is back, inspection continues on the loaded model",
            REDIS_RETRY_AFTER_S,
        ) from error
