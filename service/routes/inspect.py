"""`POST /inspect`: one RGB (+ depth) pair in, a decision, a score and a defect mask out.

The form is parsed by hand, after the API key check: FastAPI reads form parameters before running
any dependency, which would let an unauthenticated client make the gateway parse a 300 MB upload.
The fields are then validated by `InspectOptions` (pydantic), so bad values still answer 422 in the
usual shape, and the OpenAPI schema is written out below.

Stages and where they run: decode + preprocess in the decode pool, the model in the inference thread
(`ModelRuntime`), masks / map encoding in the decode pool again; the event loop only awaits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import FormData, UploadFile

from model.data.decode import check_file_size, check_same_size, decode_depth, decode_rgb
from model.errors import IumadError, UnsupportedMediaError
from model.inference import InspectionInput, InspectionModel, PreparedBatch
from model.network.anomaly_map import resize_map
from service.auth import require_inspect
from service.decision_log import DecisionRecord, utc_now_iso
from service.errors import disk_full_is_503
from service.executors import in_pool
from service.masks import encode_anomaly_map, encode_mask_png, encode_mask_rle
from service.metrics import INSPECT_ERRORS, INSPECT_LATENCY, INSPECTIONS, STAGE_LATENCY
from service.request_context import current_request_id, new_request_id
from service.runtime import Admission, InferenceResult, ModelRuntime
from service.schemas import OBJECT_NAME_PATTERN, AnomalyMap, InspectResponse, MaskFormat, RleMask, Timings
from service.scoring import decision_score, score_spread, threshold_in_force
from service.state import AppState, get_state
from service.uploads import FormErrors, read_inspection_form

log = logging.getLogger(__name__)
router = APIRouter(tags=["inspect"])


class InspectOptions(BaseModel):
    """The non-file form fields of `POST /inspect`."""

    model_config = ConfigDict(extra="ignore")

    object: str | None = Field(
        None,
        pattern=OBJECT_NAME_PATTERN,
        description="The object; omitted = the nearest enrolled object prototype chooses.",
    )
    mask: MaskFormat = Field("png", description="none | png (base64 1-bit PNG) | rle (see RleMask).")
    return_map: bool = Field(False, description="Also return the continuous anomaly map (16-bit PNG).")
    threshold: float | None = Field(
        None, allow_inf_nan=False, description="Raw-score threshold for this request only."
    )


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


@dataclass
class _Decoded:
    item: InspectionInput
    prepared: PreparedBatch
    files: dict[str, bytes] | None  # kept only to store a rejected part's images
    prepare_s: float  # resizing and depth preparation for the network (part of the decode stage)


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


def _decode(
    rgb_file: UploadFile,
    depth_file: UploadFile | None,
    object_name: str | None,
    runtime: ModelRuntime,
    max_pixels: int,
    max_depth_bytes: int,
    keep_files: bool,
) -> _Decoded:
    rgb_name = f"rgb {rgb_file.filename!r}"
    check_file_size(rgb_file.size or 0, "rgb", rgb_name, max_pixels, max_depth_bytes)
    rgb_file.file.seek(0)
    rgb_bytes = rgb_file.file.read()
    rgb = decode_rgb(rgb_bytes, name=rgb_name, max_pixels=max_pixels)
    depth = None
    depth_bytes = None
    if depth_file is not None:
        depth_name = f"depth {depth_file.filename!r}"
        check_file_size(depth_file.size or 0, "depth", depth_name, max_pixels, max_depth_bytes)
        depth_file.file.seek(0)
        depth_bytes = depth_file.file.read()
        depth = decode_depth(depth_bytes, name=depth_name, max_pixels=max_pixels, max_bytes=max_depth_bytes)
        check_same_size(rgb, depth, "rgb and depth")
    item = InspectionInput(rgb=rgb, depth=depth, object=object_name)
    files = None
    if keep_files:
        files = {"rgb": rgb_bytes} | ({"depth": depth_bytes} if depth_bytes is not None else {})
    started = time.perf_counter()
    prepared = runtime.prepare(item)
    return _Decoded(item, prepared, files, time.perf_counter() - started)


def _respond(
    state: AppState,
    options: InspectOptions,
    decoded: _Decoded,
    result: InferenceResult,
    request_id: str,
    timings: dict[str, float],
) -> InspectResponse:
    """Threshold, score, mask and map: everything after the model call (runs in the decode pool)."""
    prediction = result.prediction
    record = result.model.object(prediction.object)
    threshold, source = threshold_in_force(record, state.thresholds.get(record.name), options.threshold)
    score = decision_score(prediction.raw_score, threshold, score_spread(record))
    is_anomalous = prediction.raw_score > threshold
    height, width = decoded.item.rgb.shape[:2]

    full_map = None
    if is_anomalous or options.return_map:
        full_map = resize_map(torch.from_numpy(prediction.anomaly_map), height, width).numpy()
    if is_anomalous and full_map is not None:
        mask = full_map > threshold
    else:
        mask = np.zeros((height, width), dtype=bool)  # a passing part has no defect to show

    encoded_mask: str | RleMask | None = None
    if options.mask == "png":
        encoded_mask = encode_mask_png(mask)
    elif options.mask == "rle":
        encoded_mask = RleMask(**encode_mask_rle(mask))
    anomaly_map = (
        AnomalyMap(**encode_anomaly_map(full_map)) if options.return_map and full_map is not None else None
    )
    return InspectResponse(
        request_id=request_id,
        object=prediction.object,
        object_source=prediction.object_source,
        object_confidence=prediction.object_confidence,
        is_anomalous=is_anomalous,
        score=score,
        raw_score=prediction.raw_score,
        threshold=threshold,
        threshold_source=source,
        defect_area_fraction=float(mask.mean()) if mask.size else 0.0,
        mask_format=options.mask,
        mask=encoded_mask,
        anomaly_map=anomaly_map,
        modalities=prediction.modalities,
        model_version=result.model_version,
        timings_ms=Timings(**timings),
        warnings=list(prediction.warnings),
    )


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
    state: Annotated[AppState, Depends(get_state)],
    _role: Annotated[str, Depends(require_inspect)],
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
    runtime = state.runtime
    with disk_full_is_503("receive the images"):
        form = await read_inspection_form(request, max_files=4, max_fields=16)
    try:
        rgb_file, depth_file, options = _parse_options(form)
        if options.object is not None:
            model.object(options.object)  # 404 before any decoding
        request_id = current_request_id() or new_request_id()
        settings = state.settings

        decoded = await in_pool(
            state.decode_pool,
            _decode,
            rgb_file,
            depth_file,
            options.object,
            runtime,
            settings.max_image_pixels,
            settings.max_depth_bytes,
            settings.keep_rejected_images,
        )
        decoded_at = time.perf_counter()
        result = await runtime.infer(decoded.item, decoded.prepared, admission)
        timings = {
            "decode": decoded_at - started,
            "read": decoded_at - started - decoded.prepare_s,
            "prepare": decoded.prepare_s,
            "queue": result.queue_s,
            "infer": result.infer_s,
        }
        post_started = time.perf_counter()
        response = await in_pool(
            state.decode_pool,
            _respond,
            state,
            options,
            decoded,
            result,
            request_id,
            {**{k: round(1000 * v, 3) for k, v in timings.items()}, "post": 0.0, "total": 0.0},
        )
        finished = time.perf_counter()
    finally:
        await form.close()
    timings["post"] = finished - post_started
    response.timings_ms.post = round(1000 * timings["post"], 3)
    response.timings_ms.total = round(1000 * (finished - started), 3)
    for stage, seconds in timings.items():
        STAGE_LATENCY.labels(stage).observe(seconds)
    decision = "fail" if response.is_anomalous else "pass"
    INSPECTIONS.labels(response.object, response.model_version, decision).inc()
    INSPECT_LATENCY.labels(response.model_version).observe(finished - started)
    state.decisions.record(
        DecisionRecord(
            request_id=request_id,
            time=utc_now_iso(),
            object=response.object,
            object_source=response.object_source,
            model_version=response.model_version,
            score=response.score,
            raw_score=response.raw_score,
            threshold=response.threshold,
            decision=decision,
            latency_ms=round(1000 * (finished - started), 3),
        ),
        decoded.files if response.is_anomalous else None,
    )
    state.recent.capture(state.decode_pool, decoded.item.rgb, result, response)  # the dashboard's Live view
    return response
