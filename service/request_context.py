"""The request id: taken from `X-Request-ID` when it is safe, else generated; returned on every answer.

It lives in a context variable so every log line of the request carries it (see `service.logs`), also
in the decode pool threads, which run with a copy of the request's context.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.names import is_request_id

REQUEST_ID_HEADER = "x-request-id"

_request_id: ContextVar[str | None] = ContextVar("iumad_request_id", default=None)
access_log = logging.getLogger("service.access")


def current_request_id() -> str | None:
    return _request_id.get()


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id_from_header(value: str | None) -> str:
    """The client's id when it is a plain token, else a new one (never trust it into a path)."""
    if value and is_request_id(value):  # ids end up in log lines and file names
        return value
    return new_request_id()


class RequestIdMiddleware:
    """Pure ASGI: sets the request id, echoes it in `X-Request-ID`, writes one access log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = None
        for key, value in scope.get("headers", []):
            if key.decode("latin-1").lower() == REQUEST_ID_HEADER:
                header = value.decode("latin-1")
                break
        request_id = request_id_from_header(header)
        scope.setdefault("state", {})["request_id"] = request_id
        token = _request_id.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode("latin-1")))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            access_log.info(
                "%s %s %d",
                scope.get("method", ""),
                scope.get("path", ""),
                status,
                extra={"status": status, "duration_ms": round(1000 * (time.perf_counter() - started), 2)},
            )
            _request_id.reset(token)
