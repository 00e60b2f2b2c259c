"""The model registry: which version serves, its history, and the event stream gateways follow.

The version directories on the shared data volume hold the models; Redis holds the authoritative
pointer. Activation is one Lua script, so the sequence check, the pointer, the history entry and the
event are applied together or not at all: a writer that read a stale sequence loses instead of
silently undoing a newer activation (e.g. a rollback made while a job was training).

Gateways follow `<prefix>:events` with XREAD from their own last-seen id, so a gateway that was
disconnected replays what it missed (pub/sub would drop it), and reconcile against the pointer.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from redis import Redis

from core.names import is_version_name
from model.checkpoint import MANIFEST_FILE, WEIGHTS_FILE, Manifest, read_manifest, sha256_of
from model.errors import CheckpointError, ConflictError, InputError, NotFoundError
from store.connection import text, text_fields

HISTORY_LENGTH = 1000
STREAM_LENGTH = 10000

# KEYS: active hash, history list, events stream.
# ARGV: version, expected sequence ("" = any), unix time, reason, history length, stream length,
# the activating job's id ("" = an operator).
# -> {sequence, event id} on success, {-1, current sequence} when the expected sequence is stale.
_ACTIVATE_SCRIPT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'sequence') or '0')
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then
  return {-1, current}
end
local previous = redis.call('HGET', KEYS[1], 'version') or ''
local sequence = current + 1
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'sequence', sequence, 'activated_at', ARGV[3],
           'reason', ARGV[4], 'previous', previous, 'job_id', ARGV[7])
redis.call('LPUSH', KEYS[2], cjson.encode({version = ARGV[1], sequence = sequence, activated_at = ARGV[3],
                                           reason = ARGV[4], previous = previous, job_id = ARGV[7]}))
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[5]) - 1)
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'type', 'activated', 'version', ARGV[1],
                      'sequence', sequence, 'previous', previous)
return {sequence, id}
"""


class StaleActivationError(ConflictError):
    """The pointer moved since the caller read it; the caller's activation would undo a newer one."""

    code = "stale_activation"


@dataclass(frozen=True)
class ActiveVersion:
    version: str
    sequence: int
    activated_at: float
    reason: str = ""
    previous: str | None = None
    job_id: str | None = None  # the enrolment job that activated it; None for an operator's activation

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sequence": self.sequence,
            "activated_at": self.activated_at,
            "reason": self.reason,
            "previous": self.previous,
            "job_id": self.job_id,
        }

    def activated_by(self, job_id: str) -> bool:
        return self.job_id == job_id


@dataclass(frozen=True)
class RegistryEvent:
    id: str
    type: str
    version: str
    sequence: int


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created: str
    parent: str | None
    objects: list[str]
    kind: str  # "base" | "incremental" | "rebuild" | ""
    status: VersionStatus
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "created": self.created,
            "parent": self.parent,
            "objects": self.objects,
            "kind": self.kind,
            "status": self.status,
            "metrics": self.metrics,
        }


@dataclass
class VersionScan:
    """The version directories under a models folder: readable manifests, and why others are not."""

    manifests: list[Manifest]
    unreadable: dict[str, str]  # directory name -> error


def scan_versions(models_dir: Path) -> VersionScan:
    """Every complete version directory (never a `.`-prefixed staging one), read from disk alone: the
    listing a gateway can give without Redis."""
    scan = VersionScan(manifests=[], unreadable={})
    if not models_dir.is_dir():
        return scan
    for directory in sorted(models_dir.iterdir()):
        if (
            not directory.is_dir()
            or directory.name.startswith(".")
            or not (directory / MANIFEST_FILE).is_file()
        ):
            continue
        try:
            scan.manifests.append(read_manifest(directory))
        except CheckpointError as error:
            scan.unreadable[directory.name] = str(error)
    return scan


VersionStatus = Literal["active", "needs_review", "available"]


def version_status(manifest: Manifest, active: str | None) -> VersionStatus:
    """Active; a candidate whose forgetting guard failed (activate it to accept it); or available."""
    if manifest.version == active:
        return "active"
    if (manifest.metrics.get("forgetting_guard") or {}).get("passed") is False:
        return "needs_review"
    return "available"


def check_version_name(version: str) -> str:
    """Version ids become directory names: refuse anything that could leave `models_dir`."""
    if not is_version_name(version):
        raise InputError(f"{version!r} is not a valid model version id")
    return version


class ModelRegistry:
    """Active pointer, history and events in Redis; the versions themselves under `models_dir`."""

    def __init__(self, redis: Redis, models_dir: Path, prefix: str = "iumad") -> None:
        self.redis = redis
        self.models_dir = Path(models_dir)
        self.active_key = f"{prefix}:active"
        self.history_key = f"{prefix}:history"
        self.events_key = f"{prefix}:events"
        self._activate = redis.register_script(_ACTIVATE_SCRIPT)

    # ------------------------------------------------------------------------------- pointer

    def active(self) -> ActiveVersion | None:
        values = text_fields(self.redis.hgetall(self.active_key))
        if not values.get("version"):
            return None
        return ActiveVersion(
            version=values["version"],
            sequence=int(values.get("sequence") or 0),
            activated_at=float(values.get("activated_at") or 0.0),
            reason=values.get("reason") or "",
            previous=values.get("previous") or None,
            job_id=values.get("job_id") or None,
        )

    def activate(
        self, version: str, expected_sequence: int | None = None, reason: str = "", job_id: str | None = None
    ) -> ActiveVersion:
        """Point every gateway at `version` (any existing one: a new candidate or a rollback).

        With `expected_sequence`, refuse (StaleActivationError) if another activation happened since.
        `job_id` names the enrolment job that activates (a killed job's cleanup asks for it).
        """
        self.manifest(version)  # refuses unknown, partial or foreign directories before anyone loads them
        now = time.time()
        expected = "" if expected_sequence is None else str(int(expected_sequence))
        sequence, detail = self._activate(
            keys=[self.active_key, self.history_key, self.events_key],
            args=[version, expected, repr(now), reason, HISTORY_LENGTH, STREAM_LENGTH, job_id or ""],
        )
        if int(sequence) < 0:
            raise StaleActivationError(
                f"the active model changed while this activation was prepared (sequence {int(detail)}, "
                f"expected {expected}); refusing to overwrite the newer activation"
            )
        current = self.active()
        if current is not None and current.sequence == int(sequence):
            return current
        return ActiveVersion(
            version=version, sequence=int(sequence), activated_at=now, reason=reason, job_id=job_id
        )

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        entries = self.redis.lrange(self.history_key, 0, max(0, limit - 1))
        return [json.loads(entry) for entry in entries]

    def previous_version(self) -> str | None:
        """The version that served before the current one, for a one-step rollback."""
        active = self.active()
        if active is None:
            return None
        for entry in self.history(HISTORY_LENGTH):
            if entry.get("version") and entry["version"] != active.version:
                return entry["version"]
        return None

    # -------------------------------------------------------------------------------- events

    def last_event_id(self) -> str:
        """Where a new follower starts: everything after this id is news to it."""
        entries = self.redis.xrevrange(self.events_key, count=1)
        return text(entries[0][0]) if entries else "0-0"

    def read_events(
        self, after_id: str, block_ms: int | None = 1000, count: int = 100
    ) -> list[RegistryEvent]:
        response = self.redis.xread({self.events_key: after_id}, count=count, block=block_ms)
        events = []
        for _stream, entries in response or []:
            for entry_id, fields in entries:
                values = text_fields(fields)
                events.append(
                    RegistryEvent(
                        id=text(entry_id),
                        type=values.get("type", ""),
                        version=values.get("version", ""),
                        sequence=int(values.get("sequence") or 0),
                    )
                )
        return events

    # ------------------------------------------------------------------------------ versions

    def version_dir(self, version: str) -> Path:
        return self.models_dir / check_version_name(version)

    def manifest(self, version: str) -> Manifest:
        directory = self.version_dir(version)
        if not (directory / MANIFEST_FILE).is_file():
            raise NotFoundError(f"model version {version!r} does not exist")
        return read_manifest(directory)

    def verify(self, version: str) -> Manifest:
        """The manifest, after checking the weights' sha256 (a corrupt version must not be activated)."""
        manifest = self.manifest(version)
        weights = self.version_dir(version) / WEIGHTS_FILE
        if not weights.is_file() or sha256_of(weights) != manifest.weights_sha256:
            raise CheckpointError(
                f"model version {version!r} is corrupt or incomplete ({WEIGHTS_FILE} does not "
                "match the sha256 in its manifest); it cannot be activated"
            )
        return manifest

    def list_versions(self) -> list[VersionInfo]:
        """Every complete version on disk, newest first (staging directories are never listed)."""
        active = self.active()
        versions = [
            VersionInfo(
                version=manifest.version,
                created=manifest.created,
                parent=manifest.parent,
                objects=[record.name for record in manifest.objects],
                kind=str(manifest.training.get("kind", "")),
                status=version_status(manifest, active.version if active else None),
                metrics=manifest.metrics,
            )
            for manifest in scan_versions(self.models_dir).manifests
        ]
        versions.sort(key=lambda info: (info.created, info.version), reverse=True)
        return versions


def remove_stale_staging(models_dir: Path) -> list[Path]:
    """Delete `.tmp-*` version directories left by a killed writer (call only while holding no job)."""
    removed = []
    if models_dir.is_dir():
        for path in models_dir.glob(".tmp-*"):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
