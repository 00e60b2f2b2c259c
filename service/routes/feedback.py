"""Operators' corrections: `POST` / `DELETE /inspections/{request_id}/feedback`,
`GET /objects/{name}/feedback` and `POST /objects/{name}/refine` (operator key; what is stored and
checked: service/feedback.py; the refinement job: service/refinement.py).

A verdict comes as JSON (`{"verdict": "good"}`: the gateway kept the rejected part's images) or as
a multipart form with the part's images attached (a passed part, whose images were not kept). The
body is read after the key check, as `/inspect` does.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import UploadFile

from core.names import OBJECT_NAME_ANCHORED, REQUEST_ID_ANCHORED
from model.errors import PayloadTooLargeError, UnsupportedMediaError
from service.deps import LineageDep, OperatorCaller, OperatorRole, StateDep
from service.executors import in_pool
from service.feedback import AttachedImages, correction_info, discard_correction, record_correction
from service.refinement import request_refinement
from service.schemas import CorrectionInfo, CorrectionList, Job, RefineRequest
from service.uploads import FormErrors, read_inspection_form
from store.feedback import VERDICTS

router = APIRouter(tags=["feedback"])

RequestId = Annotated[
    str, Path(pattern=REQUEST_ID_ANCHORED, description="The inspection's request_id (its answer's field).")
]
ObjectName = Annotated[str, Path(pattern=OBJECT_NAME_ANCHORED, description="An enrolled object's name.")]
MAX_BODY_JSON_BYTES = 4096


class VerdictBody(BaseModel):
    verdict: Literal["good", "defective"] = Field(
        description="good: the part was fine; defective: it was not (a confirmed or a missed defect)."
    )


_OPENAPI_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": VerdictBody.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["verdict"],
                    "properties": {
                        "verdict": {"type": "string", "enum": list(VERDICTS)},
                        "rgb": {"type": "string", "format": "binary", "description": "The part's RGB image."},
                        "depth": {
                            "type": "string",
                            "format": "binary",
                            "description": "Its depth frame, for an object enrolled with depth.",
                        },
                    },
                }
            },
        },
    }
}


async def _read_verdict(request: Request) -> tuple[VerdictBody, AttachedImages]:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/json"):
        body = await request.body()
        if len(body) > MAX_BODY_JSON_BYTES:
            raise PayloadTooLargeError(f"a JSON verdict is at most {MAX_BODY_JSON_BYTES} bytes")
        try:
            return VerdictBody.model_validate_json(body), AttachedImages()
        except ValidationError as error:
            errors = FormErrors()
            for item in error.errors():
                errors.add(".".join(map(str, item["loc"])) or "body", item["msg"], item["type"])
            errors.raise_if_any()
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaError(
            'a verdict is JSON ({"verdict": "good"}) or multipart/form-data (verdict, rgb, depth), '
            f"not {content_type or 'a body without Content-Type'}"
        )
    form = await read_inspection_form(request, max_files=2, max_fields=4)
    try:
        errors = FormErrors()
        files: dict[str, tuple[bytes, str] | None] = {}
        for role in ("rgb", "depth"):
            value = form.get(role)
            if isinstance(value, UploadFile):
                files[role] = (await value.read(), f"{role} {value.filename!r}")
            elif value not in (None, ""):
                errors.add(role, "expected a file upload (multipart with a filename)")
        verdict_text = form.get("verdict")
        verdict = errors.validated(
            VerdictBody, {"verdict": verdict_text} if isinstance(verdict_text, str) else {}
        )
        errors.raise_if_any()
    finally:
        await form.close()
    assert verdict is not None
    rgb, depth = files.get("rgb"), files.get("depth")
    return verdict, AttachedImages(
        rgb=rgb[0] if rgb else None,
        depth=depth[0] if depth else None,
        rgb_name=rgb[1] if rgb else "rgb",
        depth_name=depth[1] if depth else "depth",
    )


@router.post(
    "/inspections/{request_id}/feedback",
    response_model=CorrectionInfo,
    summary="Mark an inspection good or defective (operator)",
    openapi_extra=_OPENAPI_BODY,
    responses={
        400: {"description": "An attached image cannot be read."},
        403: {"description": "Not an operator key."},
        404: {"description": "No such inspection in the decision log, or its object is no longer enrolled."},
        409: {
            "description": "Its images were not kept and none are attached, or the feedback store is full."
        },
        415: {"description": "Neither JSON nor a multipart form."},
        422: {"description": "A bad verdict, or attached images that do not match the object's modalities."},
    },
)
async def mark_inspection(
    request_id: RequestId, request: Request, state: StateDep, caller: OperatorCaller
) -> CorrectionInfo:
    """Recorded with who (the key's id), when, and what the gateway answered; the part's images
    are kept with it until a refinement uses them or the correction is discarded. Sending a verdict
    again for the same inspection replaces the earlier one."""
    verdict, attached = await _read_verdict(request)
    correction = await in_pool(
        state.decode_pool, record_correction, state, request_id, verdict.verdict, caller, attached
    )
    return correction_info(correction)


@router.delete(
    "/inspections/{request_id}/feedback",
    status_code=204,
    summary="Discard a pending correction and its images (operator)",
    responses={403: {"description": "Not an operator key."}, 404: {"description": "No pending correction."}},
)
async def discard_inspection_feedback(
    request_id: RequestId, state: StateDep, _role: OperatorRole
) -> Response:
    await in_pool(state.decode_pool, discard_correction, state, request_id)
    return Response(status_code=204)


@router.get(
    "/objects/{name}/feedback",
    response_model=CorrectionList,
    summary="An object's pending corrections (operator)",
    responses={403: {"description": "Not an operator key."}},
)
async def list_object_feedback(name: ObjectName, state: StateDep, _role: OperatorRole) -> CorrectionList:
    pending = await in_pool(state.decode_pool, state.feedback.pending, name)
    counts = {verdict: sum(c.verdict == verdict for c in pending) for verdict in VERDICTS}
    return CorrectionList(object=name, pending=[correction_info(c) for c in pending], counts=counts)


@router.post(
    "/objects/{name}/refine",
    status_code=202,
    response_model=Job,
    summary="Refine an object on its pending corrections (operator)",
    responses={
        403: {"description": "Not an operator key."},
        404: {"description": "Unknown object."},
        409: {"description": "No corrections pending, or the object has a job already."},
        422: {"description": "max_minutes out of range."},
        503: {"description": "This gateway runs without Redis."},
    },
)
async def refine_object(
    name: ObjectName,
    state: StateDep,
    _role: OperatorRole,
    lineage: LineageDep,
    request: RefineRequest | None = None,
) -> Job:
    """Continues the object's own adapters on its stored normals plus the parts marked good,
    re-calibrates it on its held-out normals, reports before/after rates on the corrections (the
    job's `metrics.refinement`), and activates it through the forgetting guard like an enrolment.
    Every other object stays bit-identical. Follow it with GET /jobs/{job_id}."""
    max_minutes = request.max_minutes if request is not None else None
    limit = state.settings.enroll_max_minutes_limit
    if max_minutes is not None and max_minutes > limit:
        errors = FormErrors()
        errors.add(
            "max_minutes", f"at most {limit:g} minutes on this server (IUMAD_ENROLL_MAX_MINUTES_LIMIT)"
        )
        errors.raise_if_any()
    record = await request_refinement(state, lineage, name, max_minutes)
    return Job.of(record)
