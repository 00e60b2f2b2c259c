"""The gateway's handles on the model lineage in Redis (registry, job records), and Redis-down answers.

Inspection never needs Redis once a model is loaded; enrolment, jobs and activation always do. When
Redis cannot be reached those routes answer 503 with a message that says so and that inspection
goes on, instead of a 500 with a connection traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import RedisError

from core.settings import Settings
from service.errors import ServiceUnavailableError
from store.job_store import JobStore
from store.registry import ModelRegistry

REDIS_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class Lineage:
    """The registry (active pointer, versions) and the job records of a gateway connected to Redis."""

    registry: ModelRegistry
    jobs: JobStore

    @classmethod
    def connect(cls, redis: Redis, settings: Settings) -> Lineage:
        return cls(
            ModelRegistry(redis, settings.models_dir, settings.redis_key_prefix),
            JobStore.for_settings(redis, settings),
        )


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
