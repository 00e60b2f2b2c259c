"""The operator dashboard: the page at `/`, its static files, and the JSON it reads besides the API.

The page (`service/static/`: plain HTML, CSS and ES modules, no build step, nothing from a CDN) uses
the public API for objects, enrolment, jobs and models, plus two endpoints of its own that read the
gateway's memory of recent inspections (`service.recent`):

* `GET /dashboard/recent?object=&decision=&limit=`: the latest inspections, newest first, with the
  per-object counters since the gateway started;
* `GET /dashboard/recent/{id}/{rgb|heatmap|outline}.png`: their thumbnails (<= 256 px);
* `GET /dashboard/scores?object=`: each object's latest raw scores, for the threshold histogram.

The page and its files need no key (they hold no data); the JSON and pictures need an inspect key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response

from model.errors import NotFoundError
from service.deps import InspectRole, StateDep
from service.recent import PictureKind
from service.schemas import (
    OBJECT_NAME_PATTERN,
    ObjectCounters,
    ObjectScores,
    RecentInspection,
    RecentInspections,
    RecentScores,
)

router = APIRouter(tags=["dashboard"])

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\.(css|js|svg)$")
# Everything from this gateway only: the page works on an air-gapped line and cannot leak data.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

EntryId = Annotated[
    str, PathParam(pattern=r"^[0-9a-f]{6}-[0-9]{1,18}$", description="An id from GET /dashboard/recent.")
]
ObjectFilter = Annotated[
    str | None, Query(pattern=OBJECT_NAME_PATTERN, description="Only this object's inspections.")
]


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type=MEDIA_TYPES[".html"], headers=_PAGE_HEADERS)


@router.get("/static/{name}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    path = STATIC_DIR / name
    if not STATIC_NAME.match(name) or not path.is_file():
        raise NotFoundError(f"no such dashboard file: {name[:100]!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=_PAGE_HEADERS)


@router.get(
    "/dashboard/recent",
    response_model=RecentInspections,
    summary="Recent inspections on this gateway, newest first (dashboard)",
)
def recent_inspections(
    state: StateDep,
    _role: InspectRole,
    object: ObjectFilter = None,
    decision: Literal["pass", "fail"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RecentInspections:
    """From this gateway's bounded memory (the last `capacity` parts); `counters` are per object since
    `since` (the gateway's start), unfiltered. `pictures` is null while the thumbnails are being made
    or when the gateway was too busy to make them."""
    recent = state.recent
    return RecentInspections(
        since=recent.started_at,
        capacity=recent.capacity,
        serving=state.runtime.version,
        inspections=[RecentInspection(**entry) for entry in recent.recent(object, decision, limit)],
        counters={name: ObjectCounters(**counts) for name, counts in recent.counters().items()},
    )


@router.get(
    "/dashboard/recent/{entry_id}/{kind}.png",
    summary="A recent inspection's thumbnail: rgb, heatmap (RGBA overlay) or outline (RGBA overlay)",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        404: {"description": "Unknown or forgotten inspection, or no outline (the part passed)."},
    },
)
def recent_picture(
    entry_id: EntryId,
    kind: PictureKind,
    state: StateDep,
    _role: InspectRole,
) -> Response:
    data = state.recent.picture(entry_id, kind)
    if data is None:
        raise NotFoundError(
            f"no {kind} picture for inspection {entry_id!r}: it is not among the last "
            f"{state.recent.capacity} inspections, has no pictures, or (outline) the part passed"
        )
    return Response(
        data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400, immutable"}
    )


@router.get(
    "/dashboard/scores",
    response_model=RecentScores,
    summary="Recent raw scores per object, for threshold histograms (dashboard)",
)
def recent_scores(
    state: StateDep,
    _role: InspectRole,
    object: ObjectFilter = None,
) -> RecentScores:
    """The latest raw scores of each object (oldest first, at most `per_object`) and whether each part
    was rejected, on this gateway since `since`."""
    recent = state.recent
    return RecentScores(
        since=recent.started_at,
        per_object=recent.scores_per_object,
        objects={name: ObjectScores(**scores) for name, scores in recent.scores(object).items()},
    )
