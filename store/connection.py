"""Connecting to the Redis that holds the shared state, waiting for it to answer, and the two
conventions every store module shares on it: replies decoded to text in one place (rq needs a
client that returns bytes, so `decode_responses` cannot be used), and one compare-and-delete script.

One policy for every process: a gateway must notice a dead Redis in about a second rather than hang
a request on it (short socket timeouts); an rq worker blocks in BLPOP for minutes by design, so its
connection has a connect timeout but no read timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from redis import Redis
from redis.exceptions import RedisError

from core.settings import redacted_url

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 1.0
READ_TIMEOUT_S = 3.0
HEALTH_CHECK_INTERVAL_S = 10
MAX_RETRY_DELAY_S = 10.0


def connect_redis(url: str, password: str | None = None, *, blocking: bool = False) -> Redis:
    """A client for `url`; `blocking=True` for a connection that waits in blocking commands (rq's
    worker). A password in the URL wins over `password` (redis-py's rule)."""
    return Redis.from_url(
        url,
        password=password,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=None if blocking else READ_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )


# KEYS: a key. ARGV: a value. Deletes the key only while it holds that value (a lock's or a
# reservation's token release): a holder never removes a successor's key.
DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def text(value: bytes | str | None) -> str | None:
    """One Redis reply as text (None stays None)."""
    return value.decode() if isinstance(value, bytes) else value


def text_fields(raw: dict[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash reply (HGETALL) as text keys and values."""
    return {str(text(name)): str(text(value)) for name, value in raw.items()}


def wait_for_redis(
    client: Redis, timeout_s: float | None = None, gave_up: Callable[[], bool] | None = None
) -> None:
    """Ping until Redis answers, backing off from 50 ms to 10 s. Raises the last error after
    `timeout_s`, or at once when `gave_up()` says it never will (its process died); waits for ever
    when `timeout_s` is None."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            client.ping()
            return
        except RedisError as error:
            if (deadline is not None and time.monotonic() > deadline) or (gave_up is not None and gave_up()):
                raise
            if delay >= 1.0:
                url = redacted_url(_url_of(client))
                log.warning("Redis at %s unreachable (%s); retrying in %.1f s", url, error, delay)
            time.sleep(delay)
            delay = min(MAX_RETRY_DELAY_S, delay * 2)


def _url_of(client: Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
