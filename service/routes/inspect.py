"""`POST /inspect`: one RGB (+ depth) pair in, a decision, a score and a defect mask out.

The form is parsed by hand, after the API key check: FastAPI reads form parameters before running
any dependency, which would let an unauthenticated client make the gateway parse a 300 MB upload.
The fields are then validated by `InspectOptions` (pydantic), so bad values still answer 422 in the
usual shape, and the OpenAPI schema is written out below.

What happens to the part then is service/inspection.py.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import FormData, UploadFile

from model.errors import IumadError, UnsupportedMediaError
from model.inference import InspectionModel
from service.deps import InspectRole, StateDep
from service.errors import disk_full_is_503
from service.inspection import run_inspection
from service.metrics import INSPECT_ERRORS
from service.runtime import Admission
from service.schemas import InspectOptions, InspectResponse
from service.state import AppState
from service.uploads import FormErrors, read_inspection_form

log = logging.getLogger(__name__)
router = APIRouter(tags=["inspect"])


_FILE_FIELDS = {
    "rgb": {
        "type": "string",
        "format": "binary",
        "description": "Required. PNG, JPEG, BMP or TIFF, 8 bits per channel.",
    },
    "depth": {
        "type": "string",
        "format": "binary",
        "description": "Optional. Float32 TIFF (HxW z or HxWx3 xyz, MVTec 3D-AD), 16-bit greyscale PNG "
        "or .npy (no pickles); same height and width as rgb; 0/NaN = missing.",
    },
}
_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["rgb"],
                    "properties": {**_FILE_FIELDS, **InspectOptions.model_json_schema()["properties"]},
                }
            }
        },
    }
}


def _parse_options(form: FormData) -> tuple[UploadFile, UploadFile | None, InspectOptions]:
    errors = FormErrors()
    files: dict[str, UploadFile | None] = {}
    for name in ("rgb", "depth"):
        value = form.get(name)
        if isinstance(value, UploadFile) or value is None:
            files[name] = value
        else:
            errors.add(name, "expected a file upload (multipart with a filename)")
    if files.get("rgb") is None and not errors.errors:
        errors.add("rgb", "Field required", "missing")
    values = {
        key: value
        for key, value in form.items()
        if key in InspectOptions.model_fields and isinstance(value, str) and value != ""
    }
    options = errors.validated(InspectOptions, values)
    errors.raise_if_any()
    rgb = files["rgb"]
    assert rgb is not None and options is not None
    return rgb, files["depth"], options


@router.post(
    "/inspect",
    response_model=InspectResponse,
    summary="Inspect one part (RGB + optional depth)",
    openapi_extra=_OPENAPI_BODY,
    responses={
        400: {
            "description": "Unreadable or inconsistent input (corrupt image, size mismatch, no valid depth)."
        },
        401: {"description": "Missing or unknown API key."},
        404: {"description": "Unknown object."},
        409: {"description": "Nothing is enrolled yet (the message says how to enrol)."},
        413: {"description": "Upload larger than the limit."},
        415: {"description": "Not a supported image / depth format, or not a multipart form."},
        422: {"description": "Invalid field value (object name, mask, return_map, threshold)."},
        503: {"description": "Starting, draining, model failed to load, or queue full (see Retry-After)."},
    },
)
async def inspect(
    request: Request,
    state: StateDep,
    _role: InspectRole,
) -> InspectResponse:
    """Scores the part and answers pass/fail with a mask; `score` is documented in the response schema."""
    started = time.perf_counter()
    try:
        return await _inspect(request, state, started)
    except RequestValidationError:
        INSPECT_ERRORS.labels("validation_error").inc()
        raise
    except IumadError as error:
        INSPECT_ERRORS.labels(error.code).inc()
        raise
    except Exception:
        INSPECT_ERRORS.labels("internal_error").inc()
        raise


async def _inspect(request: Request, state: AppState, started: float) -> InspectResponse:
    runtime = state.runtime
    model = runtime.serving_model()
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaError(
            f"POST /inspect takes multipart/form-data (fields rgb, depth, object, ...), "
            f"not {content_type or 'a body without Content-Type'}"
        )
    with runtime.admit() as admission:  # a full gateway refuses the upload before reading it
        return await _admitted_inspect(request, state, model, admission, started)


async def _admitted_inspect(
    request: Request, state: AppState, model: InspectionModel, admission: Admission, started: float
) -> InspectResponse:
    with disk_full_is_503("receive the images"):
        form = await read_inspection_form(request, max_files=4, max_fields=16)
    try:
        rgb_file, depth_file, options = _parse_options(form)
        return await run_inspection(state, model, admission, rgb_file, depth_file, options, started)
    finally:
        await form.close()
