"""`iumad worker`: an rq worker that runs enrolment jobs (workers/rq_worker.py)."""

from __future__ import annotations

import argparse

from core.settings import get_settings
from model.errors import IumadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis-url", help="Redis URL (default: IUMAD_REDIS_URL)")
    parser.add_argument("--queue", help="queue name (default: IUMAD_QUEUE_NAME)")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--name", help="worker name shown in rq (default: host and pid)")
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # exit when this process goes


def run(args: argparse.Namespace) -> int:
    from workers.rq_worker import run_worker

    settings = get_settings()
    url = args.redis_url or settings.redis_url
    if not url:
        raise IumadError(
            "iumad worker needs a Redis URL: set IUMAD_REDIS_URL or pass --redis-url "
            "(`iumad serve` without a URL starts its own Redis and worker)"
        )
    return run_worker(
        settings,
        url,
        args.queue or settings.queue_name,
        burst=args.burst,
        name=args.name,
        parent_pid=args.parent_pid,
    )
