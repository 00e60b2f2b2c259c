"""`POST /enroll-object`: normal samples of a new object in, a queued training job out (202).

Order matters, so that a refused upload stores nothing and costs little: operator key, then Redis
(503 before receiving hundreds of megabytes), then the body streamed to `data_dir/uploads/<id>/`,
then the fields (422), name conflicts (409), archive safety and sample validation (4xx with a report
of every rejected file), then the durable store under `samples_dir/<object>/<id>/`, and only then
the job. The upload folder is always removed; the stored enrolment is removed if enqueueing fails.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from iumad.settings import Settings
from model.errors import ConflictError, IumadError
from service.auth import require_operator
from service.errors import ServiceUnavailableError, disk_full_is_503, error_response
from service.lineage import redis_or_503, require_lineage
from service.metrics import ENROLMENT_UPLOADS
from service.schemas import OBJECT_NAME_PATTERN
from service.state import AppState, get_state
from service.uploads import ReceivedForm, receive_multipart
from store.ingest import IngestLimits, SamplesRejectedError, UploadedSamples, ingest_upload
from store.job_store import JobRecord, JobStore
from store.queue import new_job_id, submit_enrolment
from store.registry import ModelRegistry
from store.samples import StoredEnrolment

log = logging.getLogger(__name__)
router = APIRouter(tags=["enrolment"])

MAX_REJECTS_SHOWN = 200


class EnrolOptions(BaseModel):
    """The text fields of `POST /enroll-object`."""

    model_config = ConfigDict(extra="forbid")

    object: str = Field(pattern=OBJECT_NAME_PATTERN, description="The new object's name.")
    holdout_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Share of samples kept out of training "
        "for threshold calibration and future forgetting checks.",
    )
    target_false_reject_rate: float = Field(
        0.01, gt=0.0, lt=0.5, description="Share of normal parts the threshold may reject."
    )
    max_minutes: float | None = Field(
        None, gt=0.0, le=24 * 60, description="Time budget of the job (default: IUMAD_ENROLL_MAX_MINUTES)."
    )
    replace: bool = Field(
        False,
        description="Retrain an object that is already enrolled (rebuilds the model "
        "from every object's stored samples).",
    )


class EnrolmentAccepted(BaseModel):
    job_id: str
    status: str
    status_url: str
    object: str
    message: str
    enrolment: dict[str, Any]


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["object"],
                    "properties": {
                        **EnrolOptions.model_json_schema()["properties"],
                        "archive": {
                            "type": "string",
                            "format": "binary",
                            "description": ".zip, .tar or .tar.gz: MVTec 3D-AD layout (**/rgb/NNN.png + "
                            "**/xyz/NNN.tiff) or flat pairs by stem; RGB-only allowed.",
                        },
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Instead of an archive: RGB files paired with depth by stem "
                            "(000.png + 000.tiff | 000_depth.png | 000.npy).",
                        },
                    },
                }
            }
        },
    }
}


def _options(form: ReceivedForm) -> EnrolOptions:
    errors: list[dict[str, Any]] = []
    for name in form.fields:
        if name in ("archive", "files"):
            errors.append(
                {
                    "loc": ("body", name),
                    "msg": "expected a file upload (multipart with a filename)",
                    "type": "value_error",
                }
            )
    for received in form.files:
        if received.field not in ("archive", "files"):
            errors.append(
                {
                    "loc": ("body", received.field),
                    "msg": "unexpected file field; use 'archive' or 'files'",
                    "type": "value_error",
                }
            )
    archives, files = form.files_of("archive"), form.files_of("files")
    if not archives and not files:
        errors.append(
            {
                "loc": ("body", "archive"),
                "msg": "send the normal samples as one 'archive' or as repeated 'files'",
                "type": "missing",
            }
        )
    elif archives and files:
        errors.append(
            {
                "loc": ("body", "archive"),
                "msg": "send either one 'archive' or 'files', not both",
                "type": "value_error",
            }
        )
    elif len(archives) > 1:
        errors.append(
            {"loc": ("body", "archive"), "msg": "send one archive per enrolment", "type": "value_error"}
        )
    values = {name: form.value(name) for name in form.fields if name not in ("archive", "files")}
    values = {name: value for name, value in values.items() if value not in (None, "")}
    try:
        options = EnrolOptions.model_validate(values)
    except ValidationError as error:
        errors.extend({**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False))
        options = None
    if errors or options is None:
        raise RequestValidationError(errors)
    return options


def _reserve(jobs: JobStore, object_name: str, job_id: str) -> None:
    """One enrolment per object at a time: two uploads of one object cannot both be queued."""
    holder = jobs.reserve(object_name, job_id)
    if holder is None:
        return
    record = jobs.get(holder)
    what = f"a {record.status} enrolment job" if record is not None else "an enrolment upload in progress"
    raise ConflictError(
        f"object {object_name!r} already has {what} ({holder}); "
        f"wait for it or cancel it (POST /jobs/{holder}/cancel)"
    )


async def _ingest_and_submit(
    form: ReceivedForm, work: Path, options: EnrolOptions, job_id: str, state: AppState
) -> tuple[JobRecord, StoredEnrolment]:
    """With the object reserved: the conflict checks, the samples stored, the job queued."""
    registry, jobs = require_lineage(state)
    settings = state.settings
    with redis_or_503("enrol"):
        await run_in_threadpool(_check_conflicts, registry, jobs, options)
    upload = _uploaded_samples(form, work, options, job_id, settings)
    stored = await state.ingest_pool.run(ingest_upload, upload)
    job_options = {
        "holdout_fraction": options.holdout_fraction,
        "target_false_reject_rate": options.target_false_reject_rate,
        "max_minutes": options.max_minutes or settings.enroll_max_minutes,
    }
    try:
        with redis_or_503("enrol"):
            record = await run_in_threadpool(
                submit_enrolment, registry.redis, settings, stored, options.replace, job_options
            )
            await run_in_threadpool(jobs.keep_reservation, options.object, job_id)
    except BaseException:
        await run_in_threadpool(shutil.rmtree, stored.directory, True)
        raise
    return record, stored


def _check_conflicts(registry: ModelRegistry, jobs: JobStore, options: EnrolOptions) -> None:
    for record in jobs.open_jobs():
        if record.object == options.object:
            raise ConflictError(
                f"object {options.object!r} already has a {record.status} enrolment job "
                f"({record.id}); wait for it or cancel it (POST /jobs/{record.id}/cancel)"
            )
    active = registry.active()
    if active is None or options.replace:
        return
    enrolled = [record.name for record in registry.manifest(active.version).objects]
    if options.object in enrolled:
        raise ConflictError(
            f"object {options.object!r} is already enrolled (model version {active.version}); "
            "send replace=true to retrain it"
        )


def _uploaded_samples(
    form: ReceivedForm, work: Path, options: EnrolOptions, job_id: str, settings: Settings
) -> UploadedSamples:
    archives = form.files_of("archive")
    return UploadedSamples(
        object_name=options.object,
        enrolment_id=job_id,
        work_dir=work,
        samples_dir=settings.samples_dir,
        holdout_fraction=options.holdout_fraction,
        limits=IngestLimits.from_settings(settings),
        archive=archives[0].path if archives else None,
        files=tuple((received.filename, received.path) for received in form.files_of("files")),
    )


@router.post(
    "/enroll-object",
    status_code=202,
    response_model=EnrolmentAccepted,
    summary="Enrol a new object from normal samples (operator)",
    openapi_extra=_OPENAPI_BODY,
    responses={
        400: {"description": "Unreadable archive or malformed form."},
        401: {"description": "Missing or unknown API key."},
        403: {"description": "Not an operator key."},
        409: {"description": "The object is already enrolled (send replace=true) or has a job in progress."},
        413: {"description": "Upload, archive contents or member count over the limit (or a zip bomb)."},
        415: {"description": "Not multipart/form-data, or not a .zip/.tar/.tar.gz archive."},
        422: {
            "description": "Invalid field, unsafe archive (../ paths, links), invalid or unpaired samples "
            "(details list every rejected file), mixed sizes, too few samples."
        },
        503: {"description": "Redis (queue, registry) is unreachable; inspection is unaffected."},
    },
)
async def enroll_object(
    request: Request,
    state: Annotated[AppState, Depends(get_state)],
    _role: Annotated[str, Depends(require_operator)],
) -> JSONResponse:
    """Stores the samples durably, queues the training job and answers at once; poll `status_url`."""
    if state.enrolment_uploads >= state.settings.max_concurrent_enrolments:
        ENROLMENT_UPLOADS.labels("unavailable").inc()
        raise ServiceUnavailableError(
            f"this gateway is already receiving {state.enrolment_uploads} enrolment uploads "
            f"(IUMAD_MAX_CONCURRENT_ENROLMENTS); retry in a minute",
            retry_after_s=60,
        )
    state.enrolment_uploads += 1  # the event loop is the only writer
    try:
        response = await _enroll(request, state)
    except SamplesRejectedError as error:
        ENROLMENT_UPLOADS.labels("rejected").inc()
        details = [
            {"file": reject.name, "reason": reject.reason} for reject in error.rejects[:MAX_REJECTS_SHOWN]
        ]
        return error_response(request, error.http_status, error.code, str(error), details)
    except ConflictError:
        ENROLMENT_UPLOADS.labels("conflict").inc()
        raise
    except IumadError as error:
        ENROLMENT_UPLOADS.labels("unavailable" if error.http_status == 503 else "rejected").inc()
        raise
    except RequestValidationError:
        ENROLMENT_UPLOADS.labels("rejected").inc()
        raise
    finally:
        state.enrolment_uploads -= 1
    ENROLMENT_UPLOADS.labels("accepted").inc()
    return response


async def _enroll(request: Request, state: AppState) -> JSONResponse:
    registry, jobs = require_lineage(state)
    settings = state.settings
    with redis_or_503("enrol"):
        await run_in_threadpool(registry.redis.ping)
    job_id = new_job_id()
    work = settings.data_dir / "uploads" / job_id
    try:
        with disk_full_is_503("receive the samples"):
            form = await receive_multipart(request, work / "parts", settings.max_archive_members)
        options = _options(form)
        with redis_or_503("enrol"):
            await run_in_threadpool(_reserve, jobs, options.object, job_id)
        try:
            with disk_full_is_503("store the samples"):
                record, stored = await _ingest_and_submit(form, work, options, job_id, state)
        except BaseException:
            with contextlib.suppress(RedisError):
                await run_in_threadpool(jobs.release, options.object, job_id)
            raise
    finally:
        await run_in_threadpool(shutil.rmtree, work, True)
    log.info(
        "enrolment of %r accepted: job %s, %d train + %d holdout samples",
        stored.object,
        record.id,
        len(stored.train),
        len(stored.holdout),
    )
    status_url = str(request.url_for("get_job", job_id=record.id))
    body = EnrolmentAccepted(
        job_id=record.id,
        status=record.status,
        status_url=status_url,
        object=stored.object,
        message=f"{len(stored.train)} training and {len(stored.holdout)} holdout samples stored; "
        f"training job queued (poll {status_url})",
        enrolment=stored.summary(),
    )
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": status_url})
