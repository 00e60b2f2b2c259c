"""The gateway application: `create_app(settings)` builds it; its lifespan owns the `AppState`.

At start-up the lifespan starts the inference thread, the decode pool and the decision-log writer,
then loads + warms the active model version in the background (so `/healthz` answers at once and
`/readyz` says `loading` until the model is warm). At shutdown it drains the batcher first.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from core import __version__
from core.settings import Settings, get_settings
from model.errors import CheckpointError
from service.cross_site import CrossSiteGuard
from service.decision_log import DecisionLog
from service.errors import ServiceUnavailableError, install_error_handlers
from service.executors import background_processes
from service.follower import VersionFollower
from service.job_metrics import JobMetrics
from service.limits import UploadLimitMiddleware
from service.lineage import Lineage
from service.metrics import expose_without_created_series
from service.openapi import install_schema
from service.request_context import RequestIdMiddleware
from service.routes import dashboard, enrolment, feedback, health, inspect, jobs, models, objects
from service.runtime import ModelRuntime
from service.scoring import SCORE_FORMULA, SPREAD_RULE
from service.state import ACTIVE_FILE, AppState, find_active_version
from service.thresholds import open_threshold_store
from store.connection import connect_redis
from store.feedback import FeedbackStore
from store.job_store import RESERVATION_TTL_S
from store.samples import remove_idle_folders

log = logging.getLogger(__name__)

# An upload is abandoned when nothing in it changed for as long as its object may stay reserved.
ABANDONED_AFTER_S = RESERVATION_TTL_S

API_DESCRIPTION = f"""
RGB + depth anomaly detection for production lines: one unified model for every enrolled object.

* **POST /inspect** (multipart: `rgb`, optional `depth`, `object`, `mask`, `return_map`, `threshold`)
  answers `is_anomalous`, `score`, `raw_score`, `threshold`, a defect mask and per-stage timings.
* **score** = `{SCORE_FORMULA}`, `spread` = {SPREAD_RULE}: linear, unbounded (rankings survive), 0.5 at the threshold,
  above 0.5 exactly when the part is anomalous.
* **mask=rle**: `{{"size": [H, W], "counts": [...]}}`, row-major runs alternating 0s and 1s, starting
  with 0s. **return_map**: a 16-bit PNG where value v means `min + v / 65535 * (max - min)`.
* **Errors** are `{{"error": {{"code", "message"}}}}`: 400 unreadable input, 401/403 API key, 404 unknown
  object or version, 409 nothing enrolled, 413 too large, 415 unsupported format, 422 invalid field,
  503 not ready or queue full (with `Retry-After`).
* **Auth**: `X-API-Key` with an `inspect` or `operator` key (off when no keys are configured).
"""


def _upload_limits(settings: Settings) -> dict[str, int]:
    """Per-path body limits; anything else gets `limits.DEFAULT_BODY_LIMIT` (1 MiB). A verdict may
    carry the part's images (POST /inspections/{id}/feedback): an inspection's limit."""
    return {
        "/inspect": settings.max_inspect_bytes,
        "/inspections/": settings.max_inspect_bytes,
        "/enroll-object": settings.max_enroll_bytes,
    }


def _remove_abandoned_uploads(settings: Settings) -> None:
    """What a killed gateway left: upload folders and half-stored enrolments, idle for an hour."""
    leftovers = [*(settings.data_dir / "uploads").glob("*"), *settings.samples_dir.glob("*/.staging-*")]
    for path in remove_idle_folders(leftovers, ABANDONED_AFTER_S):
        log.info("removed %s, left by a gateway that stopped while receiving it", path)


def start_state(settings: Settings, redis: Any | None = None) -> AppState:
    """Start everything the routes need; the active model loads in the background."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if not settings.auth_enabled:
        log.warning(
            "AUTH IS OFF: no IUMAD_INSPECT_API_KEYS or IUMAD_OPERATOR_API_KEYS are configured, so "
            "anyone who can reach this gateway may inspect, change thresholds and enrol objects"
        )
    runtime = ModelRuntime.from_settings(settings)
    runtime.start()
    decisions = DecisionLog(
        settings.data_dir / "decisions",
        settings.data_dir / "rejected" if settings.keep_rejected_images else None,
        rejected_max_bytes=settings.rejected_max_mb * 1024 * 1024,
        rejected_max_age_s=settings.rejected_max_age_days * 86400.0,
        log_max_bytes=settings.decision_log_max_mb * 1024 * 1024,
        log_max_age_s=settings.decision_log_max_age_days * 86400.0,
    )
    decisions.start()
    _remove_abandoned_uploads(settings)
    state = AppState(
        settings=settings,
        runtime=runtime,
        thresholds=open_threshold_store(settings.data_dir, redis),
        decisions=decisions,
        feedback=FeedbackStore(settings.feedback_dir, settings.feedback_max_mb * 1024 * 1024),
        decode_pool=ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="iumad-decode"),
        ingest_pool=background_processes(settings.max_concurrent_enrolments),
        lineage=Lineage.connect(redis, settings) if redis is not None else None,
    )
    try:
        active = find_active_version(settings, state.registry)
    except CheckpointError as error:
        runtime.record_load_failure(settings.models_dir / ACTIVE_FILE, error)
        active = None
    except ServiceUnavailableError as error:  # the follower loads the active version once Redis answers
        log.warning("cannot read the active model version: %s; retrying in the background", error)
        active = None
    if active is not None:
        log.info("loading model version %s on %s", active.name, runtime.device)
        runtime.load_and_swap_in_background(active)
    elif runtime.last_load_error is None:
        log.info("nothing enrolled yet: /inspect answers 409 until an object is enrolled")
    if state.lineage is not None:  # follow activations made by any worker
        state.background = [
            VersionFollower(state.lineage.registry, runtime, settings.reconcile_interval_s),
            JobMetrics(state.lineage.jobs),
        ]
        for service in state.background:
            service.start()
    return state


def stop_state(state: AppState) -> None:
    """Drain: refuse new work, finish the queued inspections, flush the decision log."""
    for service in state.background:
        service.stop()
    state.runtime.close(state.settings.drain_timeout_s)
    state.decode_pool.shutdown(wait=True)
    state.ingest_pool.shutdown()
    state.decisions.close()


def create_app(settings: Settings | None = None, redis: Any | None = None) -> FastAPI:
    settings = settings or get_settings()
    expose_without_created_series()
    if redis is None and settings.redis_url:
        redis = connect_redis(settings.redis_url, settings.redis_password_value)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.iumad = start_state(settings, redis)
        try:
            yield
        finally:
            await run_in_threadpool(stop_state, app.state.iumad)

    app = FastAPI(
        title="IB-IUMAD Inspect", version=__version__, description=API_DESCRIPTION, lifespan=lifespan
    )
    install_error_handlers(app)
    install_schema(app)
    app.include_router(inspect.router)
    app.include_router(objects.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(enrolment.router)
    app.include_router(jobs.router)
    app.include_router(feedback.router)
    app.include_router(dashboard.router)
    # Starlette runs the last added middleware first: request id outermost, so even a 413 carries it.
    app.add_middleware(
        UploadLimitMiddleware, limits=_upload_limits(settings), body_timeout_s=settings.body_timeout_s
    )
    app.add_middleware(CrossSiteGuard, allowed_origins=settings.allowed_origins)
    app.add_middleware(RequestIdMiddleware)
    return app
