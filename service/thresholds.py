"""Operator threshold overrides: set once with `PATCH /objects/{name}`, applied to every model version.

An override replaces the manifest's calibrated threshold of that object until it is changed or
cleared. Where it is stored decides who sees it:

- with Redis in the app state: the hash `iumad:thresholds` (object name -> threshold), so every
  gateway sharing that Redis applies the same value;
- without: `thresholds.json` under the data directory, written atomically (temporary file, fsync,
  rename) under a file lock, so gateways sharing the data directory agree too.

Reads are on the inspection path, so both stores serve from memory and refresh cheaply (the file by
its mtime, Redis at most once a second). If Redis is down, the last values read keep applying.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Protocol

from service.errors import ServiceUnavailableError, ValidationFailedError
from store.connection import text_fields

log = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"
THRESHOLDS_KEY = "iumad:thresholds"


class ThresholdStore(Protocol):
    def get(self, name: str) -> float | None: ...

    def all(self) -> dict[str, float]: ...

    def set(self, name: str, value: float) -> None: ...

    def clear(self, name: str) -> None: ...


def check_threshold(value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise ValidationFailedError(f"threshold must be a finite number, got {value}")
    return value


class FileThresholdStore:
    """`data_dir/thresholds.json`: `{"object name": threshold, ...}`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._stamp: tuple[int, int] | None = None

    def _file_lock(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return (self.path.parent / f".{self.path.name}.lock").open("a")

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self._values, self._stamp = {}, None
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            data = json.loads(self.path.read_text())
            self._values = {str(k): float(v) for k, v in data.items()}
        except (OSError, ValueError, AttributeError, TypeError) as error:
            log.error("cannot read %s (%s); keeping the previous overrides", self.path, error)
            return
        self._stamp = stamp

    def get(self, name: str) -> float | None:
        return self.all().get(name)

    def all(self) -> dict[str, float]:
        with self._lock:
            self._refresh()
            return dict(self._values)

    def _update(self, name: str, value: float | None) -> None:
        with self._lock, self._file_lock() as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            self._stamp = None
            self._refresh()
            values = dict(self._values)
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
            staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with staging.open("w") as handle:
                json.dump(values, handle, indent=2, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(staging, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            self._values, self._stamp = values, None

    def set(self, name: str, value: float) -> None:
        self._update(name, check_threshold(value))

    def clear(self, name: str) -> None:
        self._update(name, None)


class RedisThresholdStore:
    """The Redis hash `iumad:thresholds`, shared by every gateway on that Redis."""

    def __init__(self, redis, key: str = THRESHOLDS_KEY, refresh_s: float = 1.0) -> None:
        self.redis = redis
        self.key = key
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._values: dict[str, float] = {}
        self._read_at = -math.inf

    def all(self) -> dict[str, float]:
        with self._lock:
            if time.monotonic() - self._read_at >= self.refresh_s:
                try:
                    raw = self.redis.hgetall(self.key)
                    self._values = {name: float(value) for name, value in text_fields(raw).items()}
                except Exception as error:  # noqa: BLE001 - Redis down: keep applying what we knew
                    log.warning(
                        "cannot read threshold overrides from Redis (%s); using the last known", error
                    )
                self._read_at = time.monotonic()
            return dict(self._values)

    def get(self, name: str) -> float | None:
        return self.all().get(name)

    def _write(self, operation, *args) -> None:
        try:
            operation(self.key, *args)
        except Exception as error:  # noqa: BLE001 - any client error means "not stored"
            raise ServiceUnavailableError(
                f"cannot store the threshold: Redis is unavailable ({error})", retry_after_s=5
            ) from error
        with self._lock:
            self._read_at = -math.inf

    def set(self, name: str, value: float) -> None:
        self._write(self.redis.hset, name, repr(check_threshold(value)))

    def clear(self, name: str) -> None:
        self._write(self.redis.hdel, name)


def open_threshold_store(data_dir: Path, redis=None) -> ThresholdStore:
    """Redis when the app has one, else the JSON file under the data directory."""
    if redis is not None:
        return RedisThresholdStore(redis)
    return FileThresholdStore(Path(data_dir) / THRESHOLDS_FILE)
