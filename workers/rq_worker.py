"""The enrolment worker process: an rq worker running one job at a time, each in a forked work horse.

The parent process never runs the model and never initialises CUDA: rq forks a work horse per job,
which trains and exits, returning all its memory. At
start-up, while no job holds the lineage lock, it removes what killed jobs left behind. rq leaves
its loop on some Redis errors (a restart between two commands): the loop is started again.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from redis import Redis
from rq import Queue, Worker

from core.settings import Settings, redacted_url
from model.errors import IumadError
from store.connection import connect_redis, wait_for_redis
from store.job_store import JOB_SERIALIZER, JobStore
from store.lineage_lock import lineage_lock_key
from store.registry import remove_stale_staging
from store.samples import remove_unused_enrolments

log = logging.getLogger("iumad.worker")


class EnrolmentWorker(Worker):
    """rq's worker, remembering whether it was told to stop (signal) or quit on an error."""

    stop_signalled = False

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)


def run_worker(
    settings: Settings,
    url: str,
    queue_name: str,
    *,
    burst: bool = False,
    name: str | None = None,
    parent_pid: int | None = None,
) -> int:
    """Work the queue until told to stop (or, with `burst`, until it is empty)."""
    _refuse_cuda_parent()
    if parent_pid:  # first: a gateway gone while we wait for its Redis must not leave us waiting
        threading.Thread(
            target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True
        ).start()
    connection = connect_redis(url, settings.redis_password_value, blocking=True)
    wait_for_redis(connection)
    queue = Queue(queue_name, connection=connection, serializer=JOB_SERIALIZER)
    _remove_leftovers(connection, settings)
    level = logging.getLevelName(logging.getLogger().level)
    while True:
        worker = EnrolmentWorker([queue], connection=connection, name=name, serializer=JOB_SERIALIZER)
        log.info(
            "worker %s: queue %r on %s; models in %s",
            worker.name,
            queue.name,
            redacted_url(url),
            settings.models_dir,
        )
        worker.work(burst=burst, logging_level=level)
        if burst or worker.stop_signalled:
            return 0
        log.warning("worker loop ended without a stop signal (Redis outage?); restarting it")
        wait_for_redis(connection)


def _refuse_cuda_parent() -> None:
    torch = sys.modules.get("torch")  # imported by other subcommands; harmless unless CUDA started
    if torch is not None and torch.cuda.is_initialized():
        raise IumadError("CUDA was initialised in the worker's parent process; forked jobs could not use it")


def _remove_leftovers(connection: Redis, settings: Settings) -> None:
    """Partial versions and unused samples of killed jobs, while no job is writing a version."""
    if connection.exists(lineage_lock_key(settings.redis_key_prefix)):
        return
    for path in remove_stale_staging(settings.models_dir):
        log.info("removed the partial version %s left by a killed job", path)
    jobs = JobStore.for_settings(connection, settings)
    keep_failed_s = 3600 * settings.failed_samples_keep_hours
    for path in remove_unused_enrolments(settings.samples_dir, settings.models_dir, jobs, keep_failed_s):
        log.info("removed the samples %s of a job that ended without a version", path)


# --- no process outlives its parent: the worker its gateway (embedded mode), a work horse its worker


def _exit_with_parent(parent_pid: int) -> None:
    """Embedded mode: stop (killing any running job) when the gateway that started us is gone."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    log.warning("parent process %d is gone; stopping the worker", parent_pid)
    os.kill(os.getpid(), signal.SIGTERM)  # rq: first signal = warm stop, second = kill the horse
    time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10.0)
    os._exit(1)
