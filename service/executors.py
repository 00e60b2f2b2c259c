"""Where the gateway's blocking work runs: a request's steps in a thread pool, with the request's
context; enrolment ingest in processes of its own, at the lowest CPU priority.

Ingest decompresses an archive of up to GBs and decodes every sample to check it. In a thread it
shared the gateway's GIL: measured (bench/hostile_uploads.py), a thread checking a 512 MiB archive
delayed a camera's inspections by about 1 s, niced or not. A process at nice 19 takes only the CPU
that inspections leave, and its memory is not the gateway's.
"""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from core.lifetime import die_with_parent
from service.errors import ServiceUnavailableError

T = TypeVar("T")
BACKGROUND_NICENESS = 19  # the lowest priority: runs on what inspections leave


async def in_pool(pool: Executor, function: Callable[..., T], *args: Any) -> T:
    """Run blocking work in a thread `pool` with the request's context (so its log lines carry the
    request id)."""
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(pool, context.run, function, *args)


def _start_background_process() -> None:
    """Lowest priority, and gone with the gateway (a SIGKILLed gateway would leave it waiting)."""
    die_with_parent()
    os.nice(BACKGROUND_NICENESS)


def _spawned_processes(workers: int) -> ProcessPoolExecutor:
    """Spawned, not forked: the gateway runs threads (torch, the batcher) a fork would copy mid-step."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_background_process
    )


class BackgroundProcesses:
    """A process pool that outlives a lost worker process: a worker killed mid-job (out of memory,
    say) fails that one request with a 503 and the next request gets a fresh pool."""

    def __init__(self, make_pool: Callable[[], Executor]) -> None:
        self._make_pool = make_pool
        self._pool = make_pool()
        self._lock = threading.Lock()

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker: module-level functions and plain (picklable) data only."""
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, function, *args)
        except BrokenProcessPool as error:
            with self._lock:
                if self._pool is pool:
                    self._pool = self._make_pool()
            pool.shutdown(wait=False, cancel_futures=True)
            raise ServiceUnavailableError(
                "the background process for this request ended unexpectedly; try again", retry_after_s=5
            ) from error

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def background_processes(workers: int) -> BackgroundProcesses:
    """Up to `workers` processes at the lowest CPU priority, started on first use and kept."""
    return BackgroundProcesses(lambda: _spawned_processes(workers))


class ServiceLoop:
    """A gateway loop in a named daemon thread (the version follower, the job metrics): `start()`,
    then `_run()` until `stop()` sets `_stop`, which `_run` waits on between rounds."""

    thread_name = "iumad-loop"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _run(self) -> None:
        raise NotImplementedError
