"""The append-only decision log, and the optional store of rejected parts' images.

Every answered inspection appends one JSON line to `data_dir/decisions/decisions-YYYY-MM-DD.jsonl`
(UTC day; a new file each day): request id, time, object, model version, score, raw score, threshold,
decision and server latency. With `keep_rejected_images`, a failed part's uploaded files are kept as
sent under `data_dir/rejected/YYYY-MM-DD/<request id>_{rgb,depth}.<ext>`, pruned to a total size and
an age limit (oldest first). The log itself is kept within `log_max_bytes` and `log_max_age_s` the
same way (a day's file is split into parts of at most 64 MiB so that old parts can go).

One background thread does all the disk work, so the event loop only puts a record on a queue. If
the writer falls behind (a full queue), records are dropped and counted rather than slowing inspection.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from model.data.decode import sniff_format
from service.metrics import DECISION_LOG_DROPPED, REJECTED_IMAGES_KEPT

log = logging.getLogger(__name__)

_PRUNE_EVERY_S = 60.0
PART_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DecisionRecord:
    request_id: str
    time: str  # ISO 8601, UTC
    object: str
    object_source: str
    model_version: str
    score: float
    raw_score: float
    threshold: float
    decision: str  # "pass" | "fail"
    latency_ms: float


@dataclass(frozen=True)
class LoggedDecision:
    """A decision as the log holds it, and the rejected part's kept files by role (paths)."""

    record: DecisionRecord
    kept_images: dict[str, Path]


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


@dataclass(frozen=True)
class _Entry:
    record: DecisionRecord
    images: dict[str, bytes] | None


class DecisionLog:
    def __init__(
        self,
        directory: Path,
        rejected_directory: Path | None = None,
        rejected_max_bytes: int = 1024 * 1024 * 1024,
        rejected_max_age_s: float = 30 * 86400,
        max_pending: int = 10_000,
        log_max_bytes: int = 1024 * 1024 * 1024,
        log_max_age_s: float = 365 * 86400,
    ) -> None:
        self.directory = Path(directory)
        self.rejected_directory = Path(rejected_directory) if rejected_directory else None
        self.rejected_max_bytes = rejected_max_bytes
        self.rejected_max_age_s = rejected_max_age_s
        self.log_max_bytes = log_max_bytes
        self.log_max_age_s = log_max_age_s
        # One file holds at most this much: a day of a busy line is split, so that the size limit
        # can remove old parts while today's file grows.
        self.part_bytes = max(64 * 1024, min(PART_BYTES, log_max_bytes // 8))
        self._path: Path | None = None
        self._log_pruned_at = 0.0
        self._queue: queue.Queue[_Entry | _Flush | None] = queue.Queue(maxsize=max_pending)
        self._thread: threading.Thread | None = None
        self._handle: IO[str] | None = None
        self._day = ""
        self._pruned_at = 0.0
        self._kept_bytes = 0  # kept images' total size, as of the last prune plus writes since

    @property
    def keeps_rejected_images(self) -> bool:
        return self.rejected_directory is not None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="iumad-decision-log", daemon=True)
        self._thread.start()

    def record(self, record: DecisionRecord, images: dict[str, bytes] | None = None) -> None:
        """Queue one decision (and, for a kept rejected part, its files by role); never blocks."""
        try:
            self._queue.put_nowait(_Entry(record, images if self.keeps_rejected_images else None))
        except queue.Full:
            DECISION_LOG_DROPPED.inc()
            log.warning("decision log writer is behind; dropped the record of %s", record.request_id)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is on disk (tests, shutdown)."""
        if self._thread is None or not self._thread.is_alive():
            return False
        done = threading.Event()
        self._queue.put(_Flush(done), timeout=timeout)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.error("decision log writer is stuck; closing without the pending records")
        self._thread.join(timeout)
        self._thread = None

    def find(self, request_id: str) -> LoggedDecision | None:
        """The latest decision logged under `request_id`, or None. Searches the log files newest
        first (a correction usually comes minutes after its inspection, so the first part hits);
        blocking disk work, for a thread. The log's own limits bound how far back it can look."""
        self.flush()
        needle = f'{{"request_id": {json.dumps(request_id)}, '.encode()
        for path in sorted(self.directory.glob("decisions-*.jsonl"), key=_log_order, reverse=True):
            line = _last_line_starting(path, needle)
            if line is not None:
                return self._logged(json.loads(line))
        return None

    def _logged(self, line: dict) -> LoggedDecision:
        kept = {}
        for relative in line.pop("kept_images", []):
            path = self.rejected_directory / relative if self.rejected_directory else None
            if path is not None and path.is_file():
                kept[Path(relative).stem.rsplit("_", 1)[-1]] = path
        fields = {name: line[name] for name in DecisionRecord.__dataclass_fields__}
        return LoggedDecision(DecisionRecord(**fields), kept)

    # --- the writer thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        if self.rejected_directory is not None:
            self._prune()
        self._prune_log()
        while True:
            item = self._queue.get()
            if item is None:
                break
            if isinstance(item, _Flush):
                self._flush_handle()
                item.done.set()
                continue
            try:
                self._write(item)
            except Exception:  # noqa: BLE001 - a full disk must not kill the writer
                DECISION_LOG_DROPPED.inc()
                log.exception("cannot write the decision of %s", item.record.request_id)
            if self._queue.empty():
                self._flush_handle()
        self._flush_handle()
        if self._handle is not None:
            self._handle.close()

    def _flush_handle(self) -> None:
        if self._handle is not None:
            try:
                self._handle.flush()
            except OSError:
                log.exception("cannot flush the decision log")

    def _write(self, entry: _Entry) -> None:
        record = entry.record
        day = record.time[:10]
        line = asdict(record)
        if entry.images and record.decision == "fail" and self.rejected_directory is not None:
            line["kept_images"] = self._keep_images(record, entry.images, day)
        if day != self._day or self._handle is None or self._handle.tell() >= self.part_bytes:
            self._open(day)
        assert self._handle is not None
        self._handle.write(json.dumps(line) + "\n")
        if time.monotonic() - self._log_pruned_at > _PRUNE_EVERY_S:
            self._prune_log()

    def _open(self, day: str) -> None:
        """`decisions-DAY.jsonl`, then `decisions-DAY.1.jsonl`, ... once a part is full."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        part = 0
        while True:
            name = f"decisions-{day}.jsonl" if part == 0 else f"decisions-{day}.{part}.jsonl"
            path = self.directory / name
            if not path.exists() or path.stat().st_size < self.part_bytes:
                break
            part += 1
        self._handle = path.open("a", encoding="utf-8")
        self._path, self._day = path, day
        self._prune_log()

    def _keep_images(self, record: DecisionRecord, images: dict[str, bytes], day: str) -> list[str]:
        assert self.rejected_directory is not None
        folder = self.rejected_directory / day
        folder.mkdir(parents=True, exist_ok=True)
        kept = []
        for role, data in images.items():
            extension = sniff_format(data) or "bin"
            path = folder / f"{record.request_id}_{role}.{extension}"
            path.write_bytes(data)
            self._kept_bytes += len(data)
            kept.append(str(path.relative_to(self.rejected_directory)))
        REJECTED_IMAGES_KEPT.inc()
        if self._kept_bytes > self.rejected_max_bytes or time.monotonic() - self._pruned_at > _PRUNE_EVERY_S:
            self._prune()
        return kept

    def _prune(self) -> None:
        """Kept images by age, then oldest first to under 90% of the size limit."""
        self._pruned_at = time.monotonic()
        if self.rejected_directory is not None:
            self._kept_bytes = prune_files(
                self.rejected_directory, self.rejected_max_age_s, self.rejected_max_bytes
            )

    def _prune_log(self) -> None:
        """Old decision files the same way; the file being written is never removed."""
        self._log_pruned_at = time.monotonic()
        keep = {self._path} if self._path is not None else set()
        prune_files(self.directory, self.log_max_age_s, self.log_max_bytes, keep=keep)


def prune_files(root: Path, max_age_s: float, max_bytes: int, keep: set[Path] | None = None) -> int:
    """Delete files under `root` older than `max_age_s`, then the oldest until the rest take under 90%
    of `max_bytes` (the margin keeps the next few writes from pruning again), then empty folders;
    returns the bytes left. Files in `keep` stay."""
    if not root.is_dir():
        return 0
    keep = keep or set()
    now = time.time()
    files = []
    for path in root.rglob("*"):
        if not path.is_file() or path in keep:
            continue
        stat = path.stat()
        if now - stat.st_mtime > max_age_s:
            path.unlink(missing_ok=True)
        else:
            files.append((stat.st_mtime, stat.st_size, path))
    total = sum(size for _, size, _ in files) + sum(path.stat().st_size for path in keep if path.is_file())
    if total > max_bytes:
        for _, size, path in sorted(files, key=lambda item: item[0]):
            if total <= 0.9 * max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
    for folder in root.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    return total


def _log_order(path: Path) -> tuple[str, int]:
    """decisions-DAY.jsonl, decisions-DAY.1.jsonl, ...: by day, then part."""
    day, _, part = path.name[len("decisions-") : -len(".jsonl")].partition(".")
    return day, int(part) if part.isdigit() else 0


def _last_line_starting(path: Path, prefix: bytes) -> bytes | None:
    try:
        with path.open("rb") as handle:
            if os.fstat(handle.fileno()).st_size == 0:
                return None
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                at = data.rfind(b"\n" + prefix)
                start = at + 1 if at >= 0 else (0 if data[: len(prefix)] == prefix else -1)
                if start < 0:
                    return None
                end = data.find(b"\n", start)
                return data[start : end if end >= 0 else len(data)]
    except FileNotFoundError:  # pruned meanwhile
        return None


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
