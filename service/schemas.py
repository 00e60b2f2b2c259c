"""Request and response bodies of the gateway (they are also its OpenAPI documentation)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.names import OBJECT_NAME_ANCHORED, VERSION_NAME_ANCHORED
from model.checkpoint import DEFAULT_FALSE_REJECT_RATE
from model.inference import ObjectSource
from service.scoring import SCORE_FORMULA, SPREAD_RULE
from store.job_store import JobKind, JobRecord, JobState
from store.registry import VersionStatus

OBJECT_NAME_PATTERN = OBJECT_NAME_ANCHORED
VERSION_PATTERN = VERSION_NAME_ANCHORED

MaskFormat = Literal["none", "png", "rle"]

SCORE_DESCRIPTION = (
    f"The decision score: `{SCORE_FORMULA}`, where `spread` is {SPREAD_RULE}. It is linear and "
    "unbounded (never clipped, so rankings of parts survive), equals 0.5 exactly at the threshold, and "
    "is above 0.5 exactly when the part is anomalous. With the calibrated threshold (the highest normal "
    "holdout score on small holdouts), a median normal part scores about 0 and a part as far above the "
    "threshold as the threshold is above the median scores 1. Negative raw scores are fine."
)


class Timings(BaseModel):
    decode: float = Field(description="Reading, decoding and preprocessing the uploads (ms): read + prepare.")
    read: float = Field(description="Receiving the form and decoding the image files into arrays (ms).")
    prepare: float = Field(
        description="Bringing the arrays to the network's input: resizing, depth preparation (ms)."
    )
    queue: float = Field(description="Waiting for the inference thread to start this part's batch (ms).")
    infer: float = Field(description="The batch's model call (ms; shared with the batch's other parts).")
    post: float = Field(description="Score mapping, mask and map encoding (ms).")
    total: float = Field(
        description="The whole request in the gateway, from its start to the response (ms): at least "
        "decode + queue + infer + post."
    )


class AnomalyMap(BaseModel):
    png: str = Field(description="Base64 16-bit greyscale PNG at the input resolution.")
    min: float = Field(description="Score of pixel value 0.")
    max: float = Field(
        description="Score of pixel value 65535; a value v stands for min + v/65535*(max-min)."
    )


class RleMask(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: list[int] = Field(
        description="Lengths of alternating runs in row-major order, starting with a run of 0s (0 long when "
        "the first pixel is a defect); they sum to height * width."
    )


class InspectResponse(BaseModel):
    request_id: str
    object: str = Field(description="The object the part was scored as.")
    object_source: ObjectSource
    object_confidence: float = Field(
        description="How surely `object` is this part's object: a softmax over the distances to each enrolled object's prototype."
    )
    is_anomalous: bool = Field(description="raw_score > threshold (equivalently score > 0.5).")
    score: float = Field(description=SCORE_DESCRIPTION)
    raw_score: float = Field(description="Maximum of the pooled, normalised anomaly map (z-score-like).")
    threshold: float = Field(description="The raw-score threshold applied to this request.")
    threshold_source: Literal["request", "operator", "calibrated"] = Field(
        description="request: the `threshold` field; operator: PATCH /objects/{name}; calibrated: the model's."
    )
    defect_area_fraction: float = Field(description="Fraction of the mask's pixels marked as defect.")
    mask_format: MaskFormat
    mask: str | RleMask | None = Field(
        description="Pixels whose anomaly-map value exceeds the threshold, at the input resolution, for an "
        "anomalous part (all clear for a passing part): a base64 1-bit PNG (white = defect) for "
        "mask=png, an RleMask for mask=rle, null for mask=none."
    )
    anomaly_map: AnomalyMap | None = Field(None, description="Only with return_map=true.")
    modalities: list[str] = Field(description="The inputs the score used (rgb, depth).")
    model_version: str = Field(description="The model version that computed this answer.")
    timings_ms: Timings
    warnings: list[str] = Field(default_factory=list)


class ObjectInfo(BaseModel):
    name: str
    label: int
    modalities: list[str]
    threshold: float | None = Field(
        description="The threshold in force: the operator override, else calibrated."
    )
    threshold_source: Literal["operator", "calibrated"]
    calibrated_threshold: float | None
    threshold_override: float | None
    target_false_reject_rate: float
    enrolled_in: str = Field(description="The model version in which the object was enrolled.")
    train_samples: int
    holdout_samples: int
    calibration: dict[str, Any]
    model_version: str = Field(description="The serving model version these values come from.")


class ObjectList(BaseModel):
    model_version: str | None
    objects: list[ObjectInfo]


class ThresholdUpdate(BaseModel):
    threshold: float | None = Field(
        description="The raw-score threshold for this object in every model version until changed; "
        "null removes the override (the calibrated threshold applies again).",
        allow_inf_nan=False,
    )


class ModelInfo(BaseModel):
    version: str
    parent: str | None
    created: str
    objects: list[str]
    metrics: dict[str, Any]
    training: dict[str, Any] = Field(description="Kind (base | incremental), new objects, timings, options.")
    active: bool = Field(description="The version the active pointer names.")
    serving: bool = Field(description="The version this gateway serves right now.")
    status: VersionStatus = Field(
        description="active; needs_review (its forgetting guard failed: activate it to accept it); available."
    )


class ModelList(BaseModel):
    active: str | None
    serving: str | None
    models: list[ModelInfo]
    unreadable: list[dict[str, str]] = Field(
        default_factory=list, description="Version directories whose manifest cannot be read, with why."
    )


class LoadErrorInfo(BaseModel):
    version_dir: str
    message: str
    at: str


class Readiness(BaseModel):
    ready: bool
    state: Literal["empty", "loading", "ready", "failed", "draining"]
    model_version: str | None
    active_version: str | None
    device: str
    backend: Literal["torch", "onnxruntime"] | None = Field(
        None, description="What runs the serving model's network (IUMAD_INFERENCE_BACKEND, auto by default)."
    )
    last_load_error: LoadErrorInfo | None
    queue_depth: int
    max_queue: int
    auth_enabled: bool


class Health(BaseModel):
    status: Literal["ok"] = "ok"


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
        DEFAULT_FALSE_REJECT_RATE,
        gt=0.0,
        lt=0.5,
        description="Share of normal parts the threshold may reject.",
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


class Job(BaseModel):
    """A job's record (`GET /jobs/{id}` adds whether its version is active and served)."""

    job_id: str
    kind: JobKind = Field(
        description="enrolment: a new object (or a replaced one); refinement: an enrolled object "
        "learning from its operators' corrections (POST /objects/{name}/refine)."
    )
    object: str
    status: JobState
    progress: float = Field(description="0 to 1.")
    stage: str = Field(description="waiting, loading, features, training, calibration, saving, ...")
    message: str
    created_at: float = Field(description="Unix time.")
    started_at: float | None
    finished_at: float | None
    version: str | None = Field(description="The version the job wrote (set when it saved one).")
    parent: str | None
    replace: bool
    cancel_requested: bool
    timings: dict[str, Any]
    metrics: dict[str, Any]
    forgetting_guard: dict[str, Any]
    enrolment: dict[str, Any]
    options: dict[str, Any]
    version_active: bool | None = Field(
        None, description="Whether `version` is still the registry's active version (GET /jobs/{id} only)."
    )
    version_serving: bool | None = Field(
        None,
        description="Whether this gateway already answers with `version`: wait for it before inspecting.",
    )
    serving_by: float | None = Field(
        None,
        description="While it runs: the latest Unix time its version can be serving (its start plus its "
        "budget); the stopping rule usually ends training sooner.",
    )
    stop_reason: str | None = Field(
        None,
        description="After training: why it stopped - `converged at step N` (the held-out pairs' error "
        "stopped falling), `budget` (max_minutes reached) or `steps` (an epoch cap).",
    )

    @classmethod
    def of(cls, record: JobRecord, **extra: Any) -> Job:
        """The answer for a job record: its fields, when it will be serving, why training stopped."""
        budget_s = 60.0 * float(record.options.get("max_minutes") or 0.0)
        running = record.status == "running" and record.started_at is not None and budget_s > 0
        reason = record.metrics.get("stop_reason")
        converged_at = record.metrics.get("converged_at_step")
        if reason == "converged" and converged_at is not None:
            reason = f"converged at step {converged_at}"
        return cls(
            **record.to_dict(),
            serving_by=record.started_at + budget_s if running else None,
            stop_reason=reason,
            **extra,
        )


class JobList(BaseModel):
    jobs: list[Job]


class ActivePointer(BaseModel):
    version: str
    sequence: int = Field(description="Increases with every activation; send it as expected_sequence.")
    activated_at: float
    reason: str
    previous: str | None
    job_id: str | None = Field(None, description="The enrolment job that activated it; null for an operator.")


class Activation(BaseModel):
    active: ActivePointer
    serving: str | None = Field(description="The version this gateway serves now (it swaps within a second).")
    message: str


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


class Pictures(BaseModel):
    width: int
    height: int
    outline: bool = Field(description="Whether there is an outline picture (the part was rejected).")


class RecentInspection(BaseModel):
    """One inspection as the dashboard's Live view shows it."""

    id: str = Field(description="For GET /dashboard/recent/{id}/{rgb|heatmap|outline}.png.")
    time: str
    request_id: str
    object: str
    object_source: ObjectSource
    decision: Literal["pass", "fail"]
    is_anomalous: bool
    score: float
    raw_score: float
    threshold: float
    threshold_source: str
    defect_area_fraction: float
    model_version: str
    modalities: list[str]
    image_size: list[int] = Field(description="[height, width] of the uploaded image.")
    warnings: list[str]
    pictures_pending: bool
    pictures: Pictures | None = Field(description="The thumbnails' size; null while being made or skipped.")


class ObjectCounters(BaseModel):
    inspected: int
    rejected: int
    reject_rate: float


class RecentInspections(BaseModel):
    since: str = Field(description="When this gateway started (counters count from then).")
    capacity: int = Field(description="How many recent inspections this gateway keeps.")
    serving: str | None
    inspections: list[RecentInspection]
    counters: dict[str, ObjectCounters]


class ObjectScores(BaseModel):
    raw_scores: list[float] = Field(description="Oldest first.")
    rejected: list[bool]


class RecentScores(BaseModel):
    since: str
    per_object: int = Field(description="At most this many scores per object.")
    objects: dict[str, ObjectScores]


class CorrectionInfo(BaseModel):
    """An operator's verdict on one inspection, as stored until a refinement uses it."""

    request_id: str
    object: str
    verdict: Literal["good", "defective"] = Field(
        description="good: the part was fine (a false reject if it failed); defective: it was not "
        "(a confirmed defect if it failed, a missed one if it passed)."
    )
    kind: Literal["false_reject", "confirmed_defect", "missed_defect", "confirmed_good"] = Field(
        description="The verdict read against the decision the gateway gave."
    )
    decision: Literal["pass", "fail"] = Field(description="What the gateway answered.")
    model_version: str = Field(description="The model version that answered the inspection.")
    score: float
    raw_score: float
    threshold: float
    inspected_at: str
    marked_by: str = Field(description="The operator key's id (a fingerprint), never the key.")
    marked_at: str
    images: list[str] = Field(description="The roles of the stored images (rgb, depth).")
    images_source: Literal["kept", "attached"] = Field(
        description="kept: the gateway's copy of a rejected part; attached: sent with the verdict."
    )


class CorrectionList(BaseModel):
    object: str
    pending: list[CorrectionInfo] = Field(
        description="Corrections not yet used by a refinement, oldest first."
    )
    counts: dict[str, int] = Field(description="Pending corrections by verdict.")


class RefineRequest(BaseModel):
    max_minutes: float | None = Field(
        None, gt=0.0, le=24 * 60, description="Time budget of the job (default: IUMAD_ENROLL_MAX_MINUTES)."
    )
