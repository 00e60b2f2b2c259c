"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers do not carry one)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from model.errors import CheckpointError
from service.deps import StateDep
from service.errors import ServiceUnavailableError
from service.metrics import QUEUE_DEPTH, REGISTRY
from service.schemas import Health, Readiness
from service.state import find_active_version

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Ready to inspect (200) or not (503), with why",
    responses={503: {"model": Readiness, "description": "Starting, loading, failed or draining."}},
)
def readyz(state: StateDep) -> JSONResponse:
    """Ready when a warmed model serves, or when nothing is enrolled yet (so enrolment can start)."""
    status = state.runtime.status()
    try:
        active = find_active_version(state.settings, state.registry)
    except (CheckpointError, ServiceUnavailableError):  # Redis down: still ready if a model serves
        active = None
    body = Readiness(
        ready=state.ready,
        state=status.state.value,
        model_version=status.model_version,
        active_version=active.name if active else None,
        device=status.device,
        backend=status.backend,
        last_load_error=asdict(status.last_load_error) if status.last_load_error else None,
        queue_depth=status.queue_depth,
        max_queue=status.max_queue,
        auth_enabled=state.settings.auth_enabled,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.ready else 503)


@router.get("/metrics", summary="Prometheus metrics (prefix iumad_)", response_class=Response)
def metrics(state: StateDep) -> Response:
    QUEUE_DEPTH.set(state.runtime.queue_depth)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
