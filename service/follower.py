"""Keeps a gateway on the active model version: follows the registry's event stream and the pointer.

A thread reads `<prefix>:events` with XREAD from this gateway's last-seen id (blocking about a second),
so activations reach it within a second, and a gateway that lost Redis for a while replays what it
missed from where it stopped. Every `reconcile_interval_s` it also compares the serving version with
the pointer, which covers a gateway (re)started after the events it missed, and trimmed streams.

Redis going away never stops inspection: the loaded model keeps serving, the follower retries with
back-off, and reconciles as soon as Redis answers again. A version that fails to load (corrupt,
truncated) is not retried in a loop: the runtime keeps the old one and the failure shows in `/readyz`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError

from model.errors import IumadError
from service.executors import ServiceLoop
from service.runtime import ModelRuntime
from store.registry import ModelRegistry

log = logging.getLogger(__name__)

FAILED_LOAD_RETRY_S = 60.0
MAX_BACKOFF_S = 5.0


class VersionFollower(ServiceLoop):
    thread_name = "iumad-version-follower"

    def __init__(
        self,
        registry: ModelRegistry,
        runtime: ModelRuntime,
        reconcile_interval_s: float = 2.0,
        block_ms: int = 1000,
    ) -> None:
        super().__init__()
        self.registry = registry
        self.runtime = runtime
        self.reconcile_interval_s = reconcile_interval_s
        self.block_ms = block_ms
        self.last_event_id: str | None = None
        self.connected = False
        self.last_error: str | None = None
        self.active_sequence: int | None = None
        self._failed: tuple[str, float] | None = None  # (version, when) of the last failed load

    def status(self) -> dict[str, Any]:
        return {
            "redis_connected": self.connected,
            "last_event_id": self.last_event_id,
            "active_sequence": self.active_sequence,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        backoff = 0.25
        next_reconcile = 0.0
        while not self._stop.is_set():
            try:
                if self.last_event_id is None:
                    self.last_event_id = self.registry.last_event_id()  # position first, then the pointer
                    next_reconcile = 0.0
                if time.monotonic() >= next_reconcile:
                    self._reconcile()
                    next_reconcile = time.monotonic() + self.reconcile_interval_s
                events = self.registry.read_events(self.last_event_id, block_ms=self.block_ms)
                if not self.connected:
                    log.info("following model activations on Redis (from event %s)", self.last_event_id)
                    self.connected, self.last_error = True, None
                activations = [event for event in events if event.type == "activated"]
                if events:
                    self.last_event_id = events[-1].id
                if activations:
                    self._apply(activations[-1].version, activations[-1].sequence, "event")
                backoff = 0.25
            except RedisError as error:
                if self.connected or self.last_error is None:
                    log.warning(
                        "Redis unreachable (%s); still serving model version %s, retrying",
                        error,
                        self.runtime.version,
                    )
                self.connected, self.last_error = False, f"{type(error).__name__}: {error}"
                next_reconcile = 0.0  # reconcile first thing once Redis answers again
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
            except Exception:  # noqa: BLE001 - the follower must outlive any single bad event
                log.exception("version follower error; continuing")
                self._stop.wait(1.0)

    def _reconcile(self) -> None:
        active = self.registry.active()
        if active is not None:
            self._apply(active.version, active.sequence, "pointer")

    def _apply(self, version: str, sequence: int, source: str) -> None:
        self.active_sequence = sequence
        if version == self.runtime.version or self.runtime.status().loading:
            return  # serving it already, or a load is under way (the next reconcile checks again)
        if (
            self._failed is not None
            and self._failed[0] == version
            and time.monotonic() - self._failed[1] < FAILED_LOAD_RETRY_S
        ):
            return
        try:
            directory = self.registry.version_dir(version)
        except IumadError as error:
            self.runtime.record_load_failure(self.registry.models_dir / version, error)
            self._failed = (version, time.monotonic())
            return
        log.info("activating model version %s (sequence %d, from the %s)", version, sequence, source)
        try:
            self.runtime.load_and_swap(directory)
            self._failed = None
        except Exception:  # noqa: BLE001 - recorded and logged by the runtime; the old version serves
            self._failed = (version, time.monotonic())
