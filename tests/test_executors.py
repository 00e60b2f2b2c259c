"""The gateway's background processes: enrolment ingest runs outside the gateway, at the lowest CPU
priority, and a lost worker process fails one request with a 503, not the pool for good."""

from __future__ import annotations

import asyncio
import functools
import os
import pickle

import pytest

from service.errors import ServiceUnavailableError, http_status_of
from service.executors import BACKGROUND_NICENESS, background_processes
from store.pairing import RejectedFile, SamplesRejectedError


@pytest.fixture(scope="module")
def processes():
    pool = background_processes(1)
    yield pool
    pool.shutdown()


def test_work_runs_in_another_process_at_the_lowest_priority(processes) -> None:
    pid = asyncio.run(processes.run(os.getpid))
    niceness = asyncio.run(processes.run(functools.partial(os.getpriority, os.PRIO_PROCESS, 0)))
    assert pid != os.getpid()
    assert niceness == BACKGROUND_NICENESS


def test_a_killed_worker_fails_its_request_with_503_and_the_next_one_gets_a_new_process(processes) -> None:
    with pytest.raises(ServiceUnavailableError, match="ended unexpectedly") as refused:
        asyncio.run(processes.run(functools.partial(os._exit, 9)))
    assert http_status_of(refused.value) == 503
    assert asyncio.run(processes.run(os.getpid)) != os.getpid()


def test_a_rejected_upload_crosses_back_with_every_rejected_file() -> None:
    error = SamplesRejectedError("2 files rejected", [RejectedFile("good/a.png", "not an image")])
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "2 files rejected"
    assert copy.rejects == error.rejects
