"""Refuse state-changing requests that a browser sends on behalf of another site.

A page an operator happens to visit can make the browser POST a form to the gateway (no CORS
preflight for a form), e.g. `POST /models/<old>/activate`: with auth off that rolls the line's model
back. Cameras and scripts send no `Origin` and no `Sec-Fetch-Site`, and the dashboard is same-origin,
so the rule is: a POST, PUT, PATCH or DELETE whose `Sec-Fetch-Site` is `cross-site` or
`same-site`, or whose `Origin` is neither this gateway's own (the `Host` it was reached at) nor one
of `IUMAD_ALLOWED_ORIGINS`, gets 403 before it reaches a route.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from service.limits import send_error

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ALLOWED_FETCH_SITES = frozenset({"same-origin", "none"})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def refusal(scope: Scope, allowed_origins: frozenset[str]) -> str | None:
    """Why this request must be refused, or None when it may go on."""
    if scope["type"] != "http" or scope["method"] not in STATE_CHANGING:
        return None
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in ALLOWED_FETCH_SITES:
        return f"a {fetch_site} request from a browser may not change this gateway's state"
    origin = _header(scope, b"origin")
    if origin is None:
        return None
    if origin.rstrip("/") in allowed_origins:
        return None
    host = _header(scope, b"host")
    parts = urlsplit(origin)
    if host is not None and parts.scheme in ("http", "https") and parts.netloc.lower() == host.lower():
        return None
    return f"requests from origin {origin!r} may not change this gateway's state (IUMAD_ALLOWED_ORIGINS)"


class CrossSiteGuard:
    """ASGI middleware applying `refusal` (403, in the usual error envelope)."""

    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_origins = frozenset(origin.rstrip("/") for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = refusal(scope, self.allowed_origins)
        if reason is None:
            await self.app(scope, receive, send)
            return
        await send_error(send, 403, "cross_site_request", reason)
