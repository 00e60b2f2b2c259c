"""The enrolment queue: submitting a stored enrolment as a job, and cancelling one.

The gateway submits and cancels; the worker runs. Jobs are named by their function's dotted path
(`ENROLMENT_JOB`), so the gateway never imports the training code. Cancel is cooperative first (the
job checks a flag between batches and stops cleanly); a running job that has not stopped after a grace
period has its work horse killed through rq. Either way the active model is untouched unless the job
had already activated its version, and then the job's record says so.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from core.settings import Settings
from model.errors import ConflictError, NotFoundError
from store.job_spec import EnrolmentSpec, RefinementSpec
from store.job_store import JOB_SERIALIZER, JobRecord, JobStore
from store.registry import ActiveVersion, ModelRegistry
from store.samples import StoredEnrolment, discard_enrolment

log = logging.getLogger(__name__)

# What a worker runs for a queued enrolment: `workers.jobs.enroll_object` (a name on the wire, so the
# gateway never imports it; tests/test_architecture.py checks that the name finds the function).
ENROLMENT_JOB = "workers.jobs.enroll_object"
REFINEMENT_JOB = "workers.jobs.refine_object"  # the same for `POST /objects/{name}/refine`
RESULT_TTL_S = 7 * 24 * 3600
FAILURE_TTL_S = 30 * 24 * 3600


def new_job_id() -> str:
    """Also the enrolment id: one job per enrolment, so samples and job share a name."""
    return uuid.uuid4().hex


def _enqueue(
    redis: Redis, settings: Settings, function: str, job_id: str, spec: dict, description: str
) -> None:
    """Put a job on the queue with an explicit timeout (rq's default is three minutes)."""
    queue = Queue(settings.queue_name, connection=redis, serializer=JOB_SERIALIZER)
    queue.enqueue(
        function,
        spec,
        job_id=job_id,
        job_timeout=settings.job_timeout_s,
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        description=description,
    )


def enqueue_enrolment(redis: Redis, settings: Settings, job_id: str, spec: EnrolmentSpec) -> None:
    _enqueue(redis, settings, ENROLMENT_JOB, job_id, spec.to_dict(), f"enrol {spec.object}")


def submit_enrolment(
    jobs: JobStore, settings: Settings, stored: StoredEnrolment, spec: EnrolmentSpec
) -> JobRecord:
    """Record and enqueue the job for a stored enrolment (its id is the enrolment id)."""
    job_id = stored.enrolment_id
    if (spec.object, spec.enrolment_id) != (stored.object, job_id):
        raise ValueError(f"the spec names {spec.enrolment}, the stored samples {stored.object}/{job_id}")
    record = jobs.create(job_id, stored.object, spec.replace, stored.summary(), spec.options())
    try:
        enqueue_enrolment(jobs.redis, settings, job_id, spec)
    except BaseException:
        with contextlib.suppress(RedisError):
            jobs.delete(job_id)
        raise
    return record


def submit_refinement(jobs: JobStore, settings: Settings, spec: RefinementSpec) -> JobRecord:
    """Record and enqueue a refinement (the caller holds the object's reservation under `spec.job_id`)."""
    summary = {"corrections": len(spec.corrections)}
    record = jobs.create(spec.job_id, spec.object, False, summary, spec.options(), kind="refinement")
    try:
        _enqueue(jobs.redis, settings, REFINEMENT_JOB, spec.job_id, spec.to_dict(), f"refine {spec.object}")
    except BaseException:
        with contextlib.suppress(RedisError):
            jobs.delete(spec.job_id)
        raise
    return record


def job_record(jobs: JobStore, job_id: str) -> JobRecord:
    """A job's record, or 404."""
    record = jobs.get(job_id)
    if record is None:
        raise NotFoundError(f"unknown job {job_id!r}; GET /jobs lists recent jobs")
    return record


def cancel_enrolment(
    jobs: JobStore, registry: ModelRegistry, samples_dir: Path, job_id: str, grace_s: float
) -> JobRecord:
    """Cancel a queued job at once (and free its samples), or ask a running one to stop and kill its
    work horse if it has not after `grace_s`. Returns the record as it stands now."""
    record = job_record(jobs, job_id)
    if record.finished:
        raise ConflictError(f"job {job_id} already ended ({record.status})")
    jobs.request_cancel(job_id)  # first, so a job starting right now sees it
    if _dequeue(jobs.redis, job_id):
        jobs.finish(job_id, "canceled", "canceled before it started; the active model is unchanged")
        discard_enrolment(samples_dir, record.object, job_id)
    else:
        timer = threading.Timer(grace_s, hard_cancel, args=(jobs, registry, samples_dir, job_id, grace_s))
        timer.daemon = True
        timer.start()
        log.info("job %s: cancel requested; killing it in %.0f s if it has not stopped", job_id, grace_s)
    return job_record(jobs, job_id)


def _dequeue(redis: Redis, job_id: str) -> bool:
    """Take a job off the queue if it has not started; False when it runs (its flag will stop it)."""
    try:
        rq_job = Job.fetch(job_id, connection=redis, serializer=JOB_SERIALIZER)
    except NoSuchJobError:
        return True
    if rq_job.get_status() not in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        return False
    try:
        rq_job.cancel()
    except InvalidJobOperation:  # it started meanwhile
        return False
    return True


def hard_cancel(
    jobs: JobStore, registry: ModelRegistry, samples_dir: Path, job_id: str, grace_s: float
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
        if not (
            active is not None and active.activated_by(job_id)
        ):  # no version uses its samples: the killed job cannot free them
            discard_enrolment(samples_dir, record.object, job_id)
        log.warning("job %s: killed after ignoring the cancel request for %.0f s", job_id, grace_s)
    except RedisError as error:
        log.error("job %s: cannot kill the job (%s); it will stop at its next cancel check", job_id, error)


def hard_cancel_message(active: ActiveVersion | None, job_id: str, grace_s: float) -> str:
    """What a kill did: the job may already have activated its version (the activation record names
    the job), and then the model did change."""
    killed = f"canceled: the job did not stop within {grace_s:.0f} s and was killed"
    if active is not None and active.activated_by(job_id):
        undo = f"; POST /models/{active.previous}/activate to go back" if active.previous else ""
        return f"{killed} after it had activated version {active.version}, which is now serving{undo}"
    return f"{killed}; the active model is unchanged"
