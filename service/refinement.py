"""A refinement on the gateway's side: check there is something to learn, reserve the object (one
job per object at a time, as enrolments), queue the job on the worker (workers/jobs.py runs it)."""

from __future__ import annotations

import contextlib

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from model.errors import ConflictError
from service.enrolment import reserve_object
from service.lineage import Lineage, redis_or_503
from service.state import AppState
from store.job_spec import RefinementSpec
from store.job_store import JobRecord
from store.queue import new_job_id, submit_refinement


async def request_refinement(
    state: AppState, lineage: Lineage, object_name: str, max_minutes: float | None
) -> JobRecord:
    """Queue a refinement of `object_name` on its pending corrections; 404 unknown object, 409 none
    pending or the object reserved by another job."""
    model = state.runtime.model or state.runtime.serving_model()
    model.object(object_name)
    pending = await run_in_threadpool(state.feedback.pending, object_name)
    if not pending:
        raise ConflictError(
            f"object {object_name!r} has no pending corrections: mark inspections good or defective "
            "first (POST /inspections/{request_id}/feedback)"
        )
    job_id = new_job_id()
    spec = RefinementSpec(
        object=object_name,
        job_id=job_id,
        max_minutes=max_minutes or state.settings.enroll_max_minutes,
        corrections=tuple(c.request_id for c in pending),
    )
    jobs = lineage.jobs
    with redis_or_503("refine"):
        await run_in_threadpool(reserve_object, jobs, object_name, job_id)
    try:
        with redis_or_503("refine"):
            record = await run_in_threadpool(submit_refinement, jobs, state.settings, spec)
            await run_in_threadpool(jobs.keep_reservation, object_name, job_id)
    except BaseException:
        with contextlib.suppress(RedisError):
            await run_in_threadpool(jobs.release, object_name, job_id)
        raise
    return record
