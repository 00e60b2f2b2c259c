"""Enrolment jobs: `GET /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/retry` and `POST /jobs/{id}/cancel`
(operator; how a cancel proceeds: store/queue.py, a retry: service/enrolment.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from core.names import JOB_ID_ANCHORED
from service.deps import InspectRole, LineageDep, OperatorRole, StateDep
from service.enrolment import retry_enrolment
from service.lineage import redis_or_503
from service.schemas import Job, JobList
from store.job_store import JobState
from store.queue import cancel_enrolment, job_record

router = APIRouter(prefix="/jobs", tags=["jobs"])

JobId = Annotated[str, Path(pattern=JOB_ID_ANCHORED, description="A job id from POST /enroll-object.")]


@router.get("", response_model=JobList, summary="Recent jobs (enrolments and refinements), newest first")
def list_jobs(
    _role: InspectRole,
    lineage: LineageDep,
    status: JobState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JobList:
    with redis_or_503("list jobs"):
        records = lineage.jobs.list(limit=limit, status=status)
    return JobList(jobs=[Job.of(record) for record in records])


@router.get(
    "/{job_id}",
    response_model=Job,
    summary="One job: status, progress, stage, timings, resulting version and metrics",
    responses={
        404: {"description": "Unknown job."},
        503: {"description": "This gateway runs without Redis."},
    },
)
def get_job(
    job_id: JobId,
    state: StateDep,
    _role: InspectRole,
    lineage: LineageDep,
) -> Job:
    """`succeeded` means the version is written and activated; gateways load it a moment later.
    `version_active` says whether it is still the registry's active version, `version_serving`
    whether this gateway already answers with it (wait for that before inspecting)."""
    with redis_or_503("read the job"):
        record = job_record(lineage.jobs, job_id)
        active = lineage.registry.active() if record.version else None
    return Job.of(
        record,
        version_active=record.version is not None and active is not None and active.version == record.version,
        version_serving=record.version is not None and state.runtime.version == record.version,
    )


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=Job,
    summary="Train a failed job's object again on its stored samples, without a second upload (operator)",
    responses={
        404: {"description": "Unknown job."},
        409: {
            "description": "The job did not fail, its object has a job in progress or is enrolled "
            "meanwhile, or its samples are no longer stored."
        },
        503: {"description": "Redis (queue, registry) is unreachable."},
    },
)
async def retry_job(
    job_id: JobId,
    request: Request,
    state: StateDep,
    _role: OperatorRole,
    lineage: LineageDep,
) -> JSONResponse:
    """A new job (its own id, `options.retry_of` naming this one) is queued on the samples the
    failed job stored; they are kept `IUMAD_FAILED_SAMPLES_KEEP_HOURS` after a failure."""
    record = await retry_enrolment(state.settings, lineage, job_id)
    status_url = str(request.url_for("get_job", job_id=record.id))
    body = Job.of(record)
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": status_url})


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    summary="Cancel a queued or running job (operator)",
    responses={404: {"description": "Unknown job."}, 409: {"description": "The job already ended."}},
)
def cancel_job(
    job_id: JobId,
    state: StateDep,
    _role: OperatorRole,
    lineage: LineageDep,
) -> Job:
    with redis_or_503("cancel the job"):
        record = cancel_enrolment(
            lineage.jobs, lineage.registry, state.settings.samples_dir, job_id, state.settings.cancel_grace_s
        )
    return Job.of(record)
