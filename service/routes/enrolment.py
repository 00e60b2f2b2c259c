"""`POST /enroll-object`: normal samples of a new object in, a queued training job out (202).

Order matters, so that a refused upload stores nothing and costs little: operator key, then Redis
(503 before receiving hundreds of megabytes), then the body streamed to `data_dir/uploads/<id>/`,
then the fields (422), and then the steps of service/enrolment.py: name conflicts (409), archive
safety and sample validation (4xx with a report of every rejected file), the durable store under
`samples_dir/<object>/<id>/`, and only then the job. The upload folder is always removed.
"""

from __future__ import annotations

import logging
import shutil

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from model.errors import ConflictError, IumadError
from service.deps import LineageDep, OperatorRole, StateDep
from service.enrolment import accept_enrolment
from service.errors import ServiceUnavailableError, disk_full_is_503
from service.lineage import Lineage, redis_or_503
from service.metrics import ENROLMENT_UPLOADS
from service.schemas import EnrolmentAccepted, EnrolOptions
from service.state import AppState
from service.uploads import FormErrors, ReceivedForm, receive_multipart
from store.queue import new_job_id

log = logging.getLogger(__name__)
router = APIRouter(tags=["enrolment"])


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


def _options(form: ReceivedForm, max_minutes_limit: float) -> EnrolOptions:
    """The form's fields, and its files in the 'archive' or 'files' fields (one way or the other)."""
    errors = FormErrors()
    for name in form.fields:
        if name in ("archive", "files"):
            errors.add(name, "expected a file upload (multipart with a filename)")
    for received in form.files:
        if received.field not in ("archive", "files"):
            errors.add(received.field, "unexpected file field; use 'archive' or 'files'")
    archives, files = form.files_of("archive"), form.files_of("files")
    if not archives and not files:
        errors.add("archive", "send the normal samples as one 'archive' or as repeated 'files'", "missing")
    elif archives and files:
        errors.add("archive", "send either one 'archive' or 'files', not both")
    elif len(archives) > 1:
        errors.add("archive", "send one archive per enrolment")
    values = {name: form.value(name) for name in form.fields if name not in ("archive", "files")}
    options = errors.validated(EnrolOptions, {k: v for k, v in values.items() if v not in (None, "")})
    if options is not None and options.max_minutes is not None and options.max_minutes > max_minutes_limit:
        errors.add(
            "max_minutes",
            f"at most {max_minutes_limit:g} minutes on this server (IUMAD_ENROLL_MAX_MINUTES_LIMIT)",
            "less_than_equal",
        )
    errors.raise_if_any()
    assert options is not None
    return options


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
    state: StateDep,
    _role: OperatorRole,
    lineage: LineageDep,
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
        response = await _enrol(request, state, lineage)
    except ConflictError:
        ENROLMENT_UPLOADS.labels("conflict").inc()
        raise
    except IumadError as error:
        ENROLMENT_UPLOADS.labels(
            "unavailable" if isinstance(error, ServiceUnavailableError) else "rejected"
        ).inc()
        raise
    except RequestValidationError:
        ENROLMENT_UPLOADS.labels("rejected").inc()
        raise
    finally:
        state.enrolment_uploads -= 1
    ENROLMENT_UPLOADS.labels("accepted").inc()
    return response


async def _enrol(request: Request, state: AppState, lineage: Lineage) -> JSONResponse:
    settings = state.settings
    with redis_or_503("enrol"):
        await run_in_threadpool(lineage.registry.redis.ping)
    job_id = new_job_id()
    work = settings.data_dir / "uploads" / job_id
    try:
        with disk_full_is_503("receive the samples"):
            form = await receive_multipart(request, work / "parts", settings.max_archive_members)
        options = _options(form, settings.enroll_max_minutes_limit)
        with disk_full_is_503("store the samples"):
            record, stored = await accept_enrolment(state, lineage, form, work, options, job_id)
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
