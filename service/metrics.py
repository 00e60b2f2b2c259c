"""Every Prometheus metric of the service, defined here and only here (prefix `iumad_`).

One registry per process (`REGISTRY`, served at `/metrics`), so several apps in one process (tests)
share the counters instead of colliding. Labels are bounded sets only: object names, model versions,
decisions, stages, outcomes — never request ids or file names.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)  # RSS, CPU, open fds: what a soak test watches
PlatformCollector(registry=REGISTRY)


def expose_without_created_series() -> None:
    """No `*_created` series on /metrics: half the lines, nothing a dashboard uses. prometheus_client
    holds this as a process-wide switch, read when it collects, so the app flips it when it is made
    (not this module when it is imported)."""
    disable_created_metrics()


# Milliseconds to seconds; fine at the low end, where a small model on a GPU answers.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- Inspection (gateway) ----------------------------------------------------------------------------

INSPECTIONS = Counter(
    "iumad_inspections",
    "Inspections answered, by object, model version and decision (pass | fail).",
    ["object", "model_version", "decision"],
    registry=REGISTRY,
)
INSPECT_ERRORS = Counter(
    "iumad_inspect_errors",
    "Inspections refused or failed, by error code (e.g. invalid_input, queue_full, internal_error).",
    ["code"],
    registry=REGISTRY,
)
STAGE_LATENCY = Histogram(
    "iumad_stage_latency_seconds",
    "Time per inspection stage: decode (= read: form + image decoding, + prepare: resizing and depth "
    "preparation), queue (waiting for a batch), "
    "infer (the batch's model call), post (masks, maps, encoding).",
    ["stage"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
INSPECT_LATENCY = Histogram(
    "iumad_inspect_latency_seconds",
    "Server-side time of a whole successful inspection, by model version.",
    ["model_version"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "iumad_batch_size",
    "Inspections per model call of the inference thread.",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64),
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "iumad_queue_depth",
    "Inspections waiting for the inference thread.",
    registry=REGISTRY,
)
QUEUE_REJECTIONS = Counter(
    "iumad_queue_rejections",
    "Inspections answered 503 because the inference queue was full.",
    registry=REGISTRY,
)

# --- Model versions -------------------------------------------------------------------------------

ACTIVE_MODEL = Info(
    "iumad_active_model",
    "The model version serving inspections in this gateway (empty before the first enrolment).",
    registry=REGISTRY,
)
MODEL_LOADS = Counter(
    "iumad_model_loads",
    "Attempts to load + warm a model version for serving, by outcome (success | failure).",
    ["outcome"],
    registry=REGISTRY,
)
MODEL_LOAD_FAILING = Gauge(
    "iumad_model_load_failing",
    "1 while the most recent load attempt failed (the previous version, if any, keeps serving).",
    registry=REGISTRY,
)
MODEL_SWAPS = Counter(
    "iumad_model_swaps",
    "Hot swaps of the serving model.",
    registry=REGISTRY,
)

# --- Decision log -----------------------------------------------------------------------------------

DECISION_LOG_DROPPED = Counter(
    "iumad_decision_log_dropped",
    "Decision-log records dropped because the writer fell behind or could not write.",
    registry=REGISTRY,
)
CORRECTIONS = Counter(
    "iumad_corrections",
    "Operators' verdicts on inspections, by object and verdict (good = a false reject, defective = "
    "a confirmed or missed defect); a verdict sent again for the same inspection counts again.",
    ["object", "verdict"],
    registry=REGISTRY,
)

REJECTED_IMAGES_KEPT = Counter(
    "iumad_rejected_images_kept",
    "Rejected parts whose images were stored for review.",
    registry=REGISTRY,
)

# --- Enrolment (jobs, worker) ------------------------------------------------------------------------
# The enrolment issue defines its metrics here: jobs by state and enrolment duration.

JOBS = Gauge(
    "iumad_jobs",
    "Enrolment jobs by state (queued, running, succeeded, failed, canceled, needs_review), as last seen.",
    ["state"],
    registry=REGISTRY,
)
ENROLMENT_DURATION = Histogram(
    "iumad_enrolment_duration_seconds",
    "From the accepted upload to the job's end, by outcome (the job's final state).",
    ["outcome"],
    buckets=(5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0),
    registry=REGISTRY,
)
ENROLMENT_UPLOADS = Counter(
    "iumad_enrolment_uploads",
    "POST /enroll-object answers, by outcome (accepted | rejected | conflict | unavailable).",
    ["outcome"],
    registry=REGISTRY,
)
