"""Enrolment on the gateway's side: reserve the object, check for conflicts, ingest the upload into
the sample store (in the ingest processes), queue the job. The route (service/routes/enrolment.py)
parses the form and answers; this module does the steps, in order, undoing what it did on failure.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from core.settings import Settings
from model.errors import ConflictError, InputError
from service.lineage import Lineage, redis_or_503
from service.schemas import EnrolOptions
from service.state import AppState
from service.uploads import ReceivedForm
from store.ingest import IngestLimits, UploadedSamples, ingest_upload
from store.job_spec import EnrolmentSpec
from store.job_store import JobRecord, JobStore
from store.queue import job_record, new_job_id, submit_enrolment
from store.registry import ModelRegistry
from store.samples import StoredEnrolment, move_enrolment


async def accept_enrolment(
    state: AppState, lineage: Lineage, form: ReceivedForm, work: Path, request: EnrolOptions, job_id: str
) -> tuple[JobRecord, StoredEnrolment]:
    """Reserve the object for this job, store its samples and queue the job; on any failure the
    reservation is released and nothing is stored."""
    with redis_or_503("enrol"):
        await run_in_threadpool(reserve_object, lineage.jobs, request.object, job_id)
    try:
        return await _ingest_and_submit(state, lineage, form, work, request, job_id)
    except BaseException:
        with contextlib.suppress(RedisError):
            await run_in_threadpool(lineage.jobs.release, request.object, job_id)
        raise


def reserve_object(jobs: JobStore, object_name: str, job_id: str) -> None:
    """One enrolment per object at a time: two uploads of one object cannot both be queued."""
    holder = jobs.reserve(object_name, job_id)
    if holder is None:
        return
    record = jobs.get(holder)
    what = f"a {record.status} {record.kind} job" if record is not None else "an enrolment upload in progress"
    raise ConflictError(
        f"object {object_name!r} already has {what} ({holder}); "
        f"wait for it or cancel it (POST /jobs/{holder}/cancel)"
    )


def check_conflicts(registry: ModelRegistry, jobs: JobStore, request: EnrolOptions) -> None:
    """An object with an open job, or already enrolled without replace=true, is a conflict."""
    for record in jobs.open_jobs():
        if record.object == request.object:
            raise ConflictError(
                f"object {request.object!r} already has a {record.status} enrolment job "
                f"({record.id}); wait for it or cancel it (POST /jobs/{record.id}/cancel)"
            )
    active = registry.active()
    if active is None or request.replace:
        return
    enrolled = [record.name for record in registry.manifest(active.version).objects]
    if request.object in enrolled:
        raise ConflictError(
            f"object {request.object!r} is already enrolled (model version {active.version}); "
            "send replace=true to retrain it"
        )


async def _ingest_and_submit(
    state: AppState, lineage: Lineage, form: ReceivedForm, work: Path, request: EnrolOptions, job_id: str
) -> tuple[JobRecord, StoredEnrolment]:
    settings, jobs = state.settings, lineage.jobs
    with redis_or_503("enrol"):
        await run_in_threadpool(check_conflicts, lineage.registry, jobs, request)
    stored = await state.ingest_pool.run(
        ingest_upload, uploaded_samples(form, work, request, job_id, settings)
    )
    spec = EnrolmentSpec(
        object=request.object,
        enrolment_id=job_id,
        max_minutes=request.max_minutes or settings.enroll_max_minutes,
        replace=request.replace,
        target_false_reject_rate=request.target_false_reject_rate,
        holdout_fraction=request.holdout_fraction,
    )
    try:
        with redis_or_503("enrol"):
            record = await run_in_threadpool(submit_enrolment, jobs, settings, stored, spec)
            await run_in_threadpool(jobs.keep_reservation, request.object, job_id)
    except BaseException:
        await run_in_threadpool(shutil.rmtree, stored.directory, True)
        raise
    return record, stored


async def retry_enrolment(settings: Settings, lineage: Lineage, job_id: str) -> JobRecord:
    """Queue a new job on the samples a failed job left (no second upload): reserve the object,
    check for conflicts as an upload would, hand the samples to the new job, queue it."""
    jobs = lineage.jobs
    with redis_or_503("retry the job"):
        failed = await run_in_threadpool(job_record, jobs, job_id)
    if failed.status != "failed":
        raise ConflictError(f"job {job_id} is {failed.status}; only a failed job can be retried")
    if failed.kind == "refinement":
        raise ConflictError(
            f"job {job_id} was a refinement: refine again with POST /objects/{failed.object}/refine "
            "(its corrections are still pending)"
        )
    new_id = new_job_id()
    with redis_or_503("retry the job"):
        await run_in_threadpool(reserve_object, jobs, failed.object, new_id)
    try:
        return await _resubmit(settings, lineage, failed, new_id)
    except BaseException:
        with contextlib.suppress(RedisError):
            await run_in_threadpool(jobs.release, failed.object, new_id)
        raise


async def _resubmit(settings: Settings, lineage: Lineage, failed: JobRecord, new_id: str) -> JobRecord:
    jobs = lineage.jobs
    request = EnrolOptions(object=failed.object, replace=failed.replace)
    with redis_or_503("retry the job"):
        await run_in_threadpool(check_conflicts, lineage.registry, jobs, request)
    try:
        stored = await run_in_threadpool(
            move_enrolment, settings.samples_dir, failed.object, failed.id, new_id
        )
    except (FileNotFoundError, InputError):
        raise ConflictError(
            f"the samples of job {failed.id} are no longer stored (kept "
            f"{settings.failed_samples_keep_hours:g} h after a failure, or already retried); "
            "upload them again with POST /enroll-object"
        ) from None
    spec = EnrolmentSpec.retrying(failed, new_id)
    try:
        with redis_or_503("retry the job"):
            record = await run_in_threadpool(submit_enrolment, jobs, settings, stored, spec)
            await run_in_threadpool(jobs.keep_reservation, failed.object, new_id)
    except BaseException:  # give the samples back to the failed job, so a later retry still works
        await run_in_threadpool(move_enrolment, settings.samples_dir, failed.object, new_id, failed.id)
        raise
    return record


def uploaded_samples(
    form: ReceivedForm, work: Path, request: EnrolOptions, job_id: str, settings: Settings
) -> UploadedSamples:
    """The received form's files, as the ingest process takes them."""
    archives = form.files_of("archive")
    return UploadedSamples(
        object_name=request.object,
        enrolment_id=job_id,
        work_dir=work,
        samples_dir=settings.samples_dir,
        holdout_fraction=request.holdout_fraction,
        limits=IngestLimits.from_settings(settings),
        archive=archives[0].path if archives else None,
        files=tuple((received.filename, received.path) for received in form.files_of("files")),
    )
