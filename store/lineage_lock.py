"""The lineage lock: one enrolment step at a time across all workers, and it names its holder.

A plain expiring lock would make the next job wait out the whole TTL after a worker is killed. This
one stores the holding job's id, so a waiting job can ask the job records whether the holder is
still alive (its heartbeat) and take over as soon as the holder is known dead.
"""

from __future__ import annotations

from redis import Redis

from store.connection import DELETE_IF_EQUAL, text

LINEAGE_LOCK_TTL_S = 20


def lineage_lock_key(prefix: str) -> str:
    """The one lock per deployment (`IUMAD_REDIS_KEY_PREFIX`): the key a worker checks at start-up."""
    return f"{prefix}:lineage-lock"


_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class LineageLock:
    def __init__(self, redis: Redis, key: str, owner: str, ttl_s: float = 20.0) -> None:
        self.redis = redis
        self.key = key
        self.owner = owner
        self.ttl_ms = int(ttl_s * 1000)
        self._refresh = redis.register_script(_REFRESH)
        self._release_if_held_by = redis.register_script(DELETE_IF_EQUAL)

    def try_acquire(self) -> bool:
        return bool(self.redis.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def holder(self) -> str | None:
        return text(self.redis.get(self.key))

    def refresh(self) -> bool:
        return bool(self._refresh(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> bool:
        return bool(self._release_if_held_by(keys=[self.key], args=[self.owner]))

    def break_if_held_by(self, holder: str) -> bool:
        """Remove the lock of a holder known to be dead (and only that holder's)."""
        return bool(self._release_if_held_by(keys=[self.key], args=[holder]))
