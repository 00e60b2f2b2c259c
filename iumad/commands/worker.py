"""`iumad worker`: an rq worker that runs enrolment jobs, one at a time, each in a forked work horse.

The parent process never imports the model code: rq forks a work horse per job, which imports torch,
trains, and exits, returning all its memory (and would keep CUDA out of the forking parent).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Worker

from iumad.settings import get_settings, redacted_url
from workers.job_store import JOB_SERIALIZER, JobStore

log = logging.getLogger("iumad.worker")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis URL (default: IUMAD_REDIS_URL)")
    parser.add_argument("--queue", help="queue name (default: IUMAD_QUEUE_NAME)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", help="worker name shown in rq (default: host and pid)")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # exit when this process goes


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


def run(args: argparse.Namespace) -> int:
    from model.errors import IumadError
    from workers.jobs import lineage_lock_key, remove_stale_staging, remove_unused_enrolments

    settings = get_settings()
    url = args.redis_url or settings.redis_url
    if not url:
        raise IumadError(
            "iumad worker needs a Redis URL: set IUMAD_REDIS_URL or pass --redis-url "
            "(`iumad serve` without a URL starts its own Redis and worker)"
        )
    torch = sys.modules.get("torch")  # imported by other subcommands; harmless unless CUDA started
    if torch is not None and torch.cuda.is_initialized():
        raise IumadError("CUDA was initialised in the worker's parent process; forked jobs could not use it")
    connection = Redis.from_url(url, password=settings.redis_password_value)
    _wait_for_redis(connection, url)
    queue = Queue(args.queue or settings.queue_name, connection=connection, serializer=JOB_SERIALIZER)
    if not connection.exists(lineage_lock_key(settings)):  # no job is writing a version now
        for path in remove_stale_staging(settings.models_dir):
            log.info("removed the partial version %s left by a killed job", path)
        store = JobStore(connection, settings.redis_key_prefix, settings.job_heartbeat_timeout_s)
        for path in remove_unused_enrolments(settings, store):
            log.info("removed the samples %s of a job that ended without a version", path)
    if args.parent_pid:
        threading.Thread(
            target=_exit_with_parent, args=(args.parent_pid,), name="parent-watch", daemon=True
        ).start()
    level = logging.getLevelName(logging.getLogger().level)
    while True:
        worker = EnrolmentWorker([queue], connection=connection, name=args.name, serializer=JOB_SERIALIZER)
        log.info(
            "worker %s: queue %r on %s; models in %s",
            worker.name,
            queue.name,
            redacted_url(url),
            settings.models_dir,
        )
        worker.work(burst=args.burst, logging_level=level)
        if args.burst or worker.stop_signalled:
            return 0
        # rq quits its loop on some Redis errors (e.g. a restart between two commands): start again.
        log.warning("worker loop ended without a stop signal (Redis outage?); restarting it")
        _wait_for_redis(connection, url)


def _wait_for_redis(connection: Redis, url: str) -> None:
    delay = 0.5
    while True:
        try:
            connection.ping()
            return
        except RedisError as error:
            log.warning("Redis at %s unreachable (%s); retrying in %.1f s", redacted_url(url), error, delay)
            time.sleep(delay)
            delay = min(10.0, delay * 2)


class EnrolmentWorker(Worker):
    """rq's worker, remembering whether it was told to stop (signal) or quit on an error."""

    stop_signalled = False

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_signalled = True
        super().request_stop(signum, frame)
