"""Enrolment jobs: `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel` (operator).

Cancel is cooperative first (the job checks a flag between batches and stops cleanly); a running job
that has not stopped after `cancel_grace_s` has its work horse killed through rq. Either way the
active model is untouched: a version is only activated at the very end of a job.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from redis.exceptions import RedisError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from model.errors import ConflictError, NotFoundError
from service.auth import require_inspect, require_operator
from service.lineage import redis_or_503, require_lineage
from service.state import AppState, get_state
from workers.job_store import JOB_SERIALIZER, JobRecord, JobStore
from workers.registry import ActiveVersion, ModelRegistry
from workers.storage import discard_enrolment

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A job id from POST /enroll-object.")
]
JobState = Literal["queued", "running", "succeeded", "failed", "canceled", "needs_review"]


def _get(jobs: JobStore, job_id: str) -> JobRecord:
    record = jobs.get(job_id)
    if record is None:
        raise NotFoundError(f"unknown job {job_id!r}; GET /jobs lists recent jobs")
    return record


@router.get("", summary="Recent enrolment jobs, newest first")
def list_jobs(
    state: Annotated[AppState, Depends(get_state)],
    _role: Annotated[str, Depends(require_inspect)],
    status: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    _, jobs = require_lineage(state)
    with redis_or_503("list jobs"):
        records = jobs.list(limit=limit, status=status)
    return {"jobs": [record.to_dict() for record in records]}


@router.get("/{job_id}", summary="One job: status, progress, stage, timings, resulting version and metrics")
def get_job(
    job_id: JobId,
    state: Annotated[AppState, Depends(get_state)],
    _role: Annotated[str, Depends(require_inspect)],
) -> dict[str, Any]:
    """`succeeded` means the version is written and activated; gateways load it a moment later.
    `version_active` says whether it is still the registry's active version, `version_serving`
    whether this gateway already answers with it (wait for that before inspecting)."""
    registry, jobs = require_lineage(state)
    with redis_or_503("read the job"):
        record = _get(jobs, job_id)
        active = registry.active() if record.version else None
    return record.to_dict() | {
        "version_active": record.version is not None
        and active is not None
        and active.version == record.version,
        "version_serving": record.version is not None and state.runtime.version == record.version,
    }


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a queued or running job (operator)",
    responses={404: {"description": "Unknown job."}, 409: {"description": "The job already ended."}},
)
def cancel_job(
    job_id: JobId,
    state: Annotated[AppState, Depends(get_state)],
    _role: Annotated[str, Depends(require_operator)],
) -> dict[str, Any]:
    registry, jobs = require_lineage(state)
    with redis_or_503("cancel the job"):
        record = _get(jobs, job_id)
        if record.finished:
            raise ConflictError(f"job {job_id} already ended ({record.status})")
        jobs.request_cancel(job_id)  # first, so a job starting right now sees it
        try:
            rq_job = Job.fetch(job_id, connection=jobs.redis, serializer=JOB_SERIALIZER)
            queued = rq_job.get_status() in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED)
        except NoSuchJobError:
            rq_job, queued = None, True
        if queued:
            if rq_job is not None:
                try:
                    rq_job.cancel()
                except InvalidJobOperation:  # it started meanwhile: the flag stops it
                    queued = False
            if queued:
                jobs.finish(job_id, "canceled", "canceled before it started; the active model is unchanged")
                discard_enrolment(state.settings.samples_dir, record.object, job_id)
        if not queued:
            grace = state.settings.cancel_grace_s
            timer = threading.Timer(
                grace, _hard_cancel, args=(jobs, registry, state.settings.samples_dir, job_id, grace)
            )
            timer.daemon = True
            timer.start()
            log.info("job %s: cancel requested; killing it in %.0f s if it has not stopped", job_id, grace)
        return _get(jobs, job_id).to_dict()


def _hard_cancel(
    jobs: JobStore, registry: ModelRegistry, samples_dir: FilePath, job_id: str, grace_s: float
) -> None:
    """Kill the work horse of a job that ignored the cancel flag (stuck in a long, uninterruptible step)."""
    try:
        record = jobs.get(job_id)
        if record is None or record.finished:
            return
        with contextlib.suppress(InvalidJobOperation, NoSuchJobError):  # not executing (anymore)
            send_stop_job_command(jobs.redis, job_id, serializer=JOB_SERIALIZER)
        active = registry.active()
        jobs.finish(job_id, "canceled", hard_cancel_message(active, job_id, grace_s))
        if not _activated_by(active, job_id):  # no version uses its samples: the killed job cannot free them
            discard_enrolment(samples_dir, record.object, job_id)
        log.warning("job %s: killed after ignoring the cancel request for %.0f s", job_id, grace_s)
    except RedisError as error:
        log.error("job %s: cannot kill the job (%s); it will stop at its next cancel check", job_id, error)


def hard_cancel_message(active: ActiveVersion | None, job_id: str, grace_s: float) -> str:
    """What a kill did: the job may already have activated its version (its activation reason names
    the job), and then the model did change."""
    killed = f"canceled: the job did not stop within {grace_s:.0f} s and was killed"
    if active is not None and _activated_by(active, job_id):
        undo = f"; POST /models/{active.previous}/activate to go back" if active.previous else ""
        return f"{killed} after it had activated version {active.version}, which is now serving{undo}"
    return f"{killed}; the active model is unchanged"


def _activated_by(active: ActiveVersion | None, job_id: str) -> bool:
    return active is not None and active.reason.endswith(f"(job {job_id})")
