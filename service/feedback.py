"""Operators' corrections of inspections: find what the gateway answered, take the part's images,
store the verdict (store/feedback.py), count it.

The images come from the gateway's own copy of a rejected part (`IUMAD_KEEP_REJECTED_IMAGES`) or
are attached by the operator (a passed part, whose images were not kept); attached images must be
readable and match the object's modalities, as an enrolment's would. All of it is blocking disk
work: the routes run it in the decode pool.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.data.decode import check_file_size, check_same_size, decode_depth, decode_rgb
from model.errors import ConflictError, NotFoundError
from service.auth import Caller
from service.decision_log import LoggedDecision, utc_now_iso
from service.metrics import CORRECTIONS
from service.schemas import CorrectionInfo
from service.state import AppState
from store.feedback import Correction, CorrectionImagesError, InspectionFacts, Verdict


@dataclass(frozen=True)
class AttachedImages:
    """What the operator sent with a verdict: file bytes by role, with the names they came under."""

    rgb: bytes | None = None
    depth: bytes | None = None
    rgb_name: str = "rgb"
    depth_name: str = "depth"

    @property
    def empty(self) -> bool:
        return self.rgb is None and self.depth is None


def record_correction(
    state: AppState, request_id: str, verdict: Verdict, caller: Caller, attached: AttachedImages
) -> Correction:
    """Store `verdict` for inspection `request_id`; 404 unknown inspection, 409 no images to keep."""
    logged = state.decisions.find(request_id)
    if logged is None:
        raise NotFoundError(
            f"no inspection {request_id!r} in the decision log (it keeps "
            f"{state.settings.decision_log_max_age_days} days, up to {state.settings.decision_log_max_mb} MB)"
        )
    modalities = _modalities_of(state, logged.record.object)
    previous = state.feedback.get(logged.record.object, request_id)
    if not attached.empty:
        images: dict[str, bytes] | None = _checked_attachment(
            state, attached, logged.record.object, modalities
        )
        source = "attached"
    elif logged.kept_images.get("rgb") is not None:
        images = {role: path.read_bytes() for role, path in logged.kept_images.items()}
        source = "kept"
    elif previous is not None:
        images, source = None, previous.images_source
    else:
        raise ConflictError(
            f"the images of inspection {request_id!r} were not kept (it "
            f"{'passed' if logged.record.decision == 'pass' else 'failed while IUMAD_KEEP_REJECTED_IMAGES was off'}"
            "): attach them (multipart fields rgb and, for an object with depth, depth)"
        )
    correction = Correction(
        inspection=_facts(logged),
        verdict=verdict,
        marked_by=caller.key_id,
        marked_at=utc_now_iso(),
        images_source=source,
    )
    stored = state.feedback.put(correction, images)
    CORRECTIONS.labels(stored.object, verdict).inc()
    return stored


def discard_correction(state: AppState, request_id: str) -> None:
    for object_name in state.feedback.objects():
        if state.feedback.discard(object_name, request_id):
            return
    raise NotFoundError(f"no pending correction of inspection {request_id!r}")


def _facts(logged: LoggedDecision) -> InspectionFacts:
    record = logged.record
    return InspectionFacts(
        request_id=record.request_id,
        object=record.object,
        model_version=record.model_version,
        score=record.score,
        raw_score=record.raw_score,
        threshold=record.threshold,
        decision=record.decision,
        inspected_at=record.time,
    )


def _modalities_of(state: AppState, object_name: str) -> list[str]:
    model = state.runtime.model
    if model is None:
        raise ConflictError("no model is loaded: corrections need the object they correct")
    return list(model.object(object_name).modalities)  # 404 when it is no longer enrolled


def _checked_attachment(
    state: AppState, attached: AttachedImages, object_name: str, modalities: list[str]
) -> dict[str, bytes]:
    """The attached files, decoded once to prove they are a usable pair for this object."""
    settings = state.settings
    if attached.rgb is None:
        raise CorrectionImagesError("attach the part's rgb image (and depth for an object with depth)")
    if attached.depth is not None and "depth" not in modalities:
        raise CorrectionImagesError(f"object {object_name!r} is RGB-only: do not attach a depth frame")
    if attached.depth is None and "depth" in modalities:
        raise CorrectionImagesError(
            f"object {object_name!r} was enrolled with depth: attach its depth frame too"
        )
    files = {"rgb": attached.rgb} | ({"depth": attached.depth} if attached.depth is not None else {})
    names = {"rgb": attached.rgb_name, "depth": attached.depth_name}
    for role, data in files.items():
        check_file_size(len(data), role, names[role], settings.max_image_pixels, settings.max_depth_bytes)
    rgb = decode_rgb(attached.rgb, name=names["rgb"], max_pixels=settings.max_image_pixels)
    if attached.depth is not None:
        depth = decode_depth(
            attached.depth, name=names["depth"], max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_depth_bytes,
        )  # fmt: skip
        check_same_size(rgb, depth, "rgb and depth")
    return files


def correction_kind(verdict: Verdict, decision: str) -> str:
    """The verdict read against the answer: what kind of mistake (or confirmation) it records."""
    if verdict == "good":
        return "false_reject" if decision == "fail" else "confirmed_good"
    return "confirmed_defect" if decision == "fail" else "missed_defect"


def correction_info(correction: Correction) -> CorrectionInfo:
    facts = correction.inspection
    return CorrectionInfo(
        request_id=facts.request_id,
        object=facts.object,
        verdict=correction.verdict,
        kind=correction_kind(correction.verdict, facts.decision),
        decision=facts.decision,
        model_version=facts.model_version,
        score=facts.score,
        raw_score=facts.raw_score,
        threshold=facts.threshold,
        inspected_at=facts.inspected_at,
        marked_by=correction.marked_by,
        marked_at=correction.marked_at,
        images=sorted(correction.images),
        images_source=correction.images_source,
    )
