"""Request-body size and pace limits, enforced before anything parses the body (pure ASGI middleware).

Two checks, because a client may lie or not say: a declared `Content-Length` over the limit is answered
413 at once, without reading a byte of the body; a body without one (chunked) is counted as it streams
and cut off at the limit. Either way the answer closes the connection (`Connection: close`), so the
server never has to swallow the rest of an oversized upload. A client that sends nothing of its body
for `body_timeout_s` gets 408 (`BodyTimeoutError`, raised where the app reads the body) instead of
holding a connection and a decode slot open for ever.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BodyTimeoutError, error_body

log = logging.getLogger(__name__)

DEFAULT_BODY_LIMIT = 1024 * 1024  # JSON bodies (PATCH /objects/...) need far less than this


class UploadLimitMiddleware:
    """`limits` maps a path (exact, or a prefix ending in '/') to its byte limit; others get `default`."""

    def __init__(
        self,
        app: ASGIApp,
        limits: Mapping[str, int],
        default: int = DEFAULT_BODY_LIMIT,
        body_timeout_s: float | None = None,
    ) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default = default
        self.body_timeout_s = body_timeout_s

    def limit_for(self, path: str) -> int:
        if path in self.limits:
            return self.limits[path]
        for prefix, limit in self.limits.items():
            if prefix.endswith("/") and path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_for(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            log.info("refused %s: Content-Length %d > limit %d", path, declared, limit)
            await _send_too_large(send, path, limit, declared)
            return

        received = 0
        exceeded = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                log.info("refused %s: no body bytes for %.0f s", path, self.body_timeout_s)
                raise BodyTimeoutError(
                    f"the request body stalled: nothing arrived for {self.body_timeout_s:.0f} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True  # the app sees a disconnect; we answer 413 in its place
                    log.info("refused %s: streamed body passed the limit of %d bytes", path, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                return  # whatever the app answers to the cut-off body is replaced by the 413 below
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not (exceeded and not response_started):
                raise
        if exceeded and not response_started:
            await _send_too_large(send, path, limit, None)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def send_error(send: Send, status: int, code: str, message: str, close: bool = False) -> None:
    """An error in the JSON envelope straight from ASGI middleware (before any route runs)."""
    body = json.dumps(error_body(code, message)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_too_large(send: Send, path: str, limit: int, declared: int | None) -> None:
    size = f"{declared} bytes" if declared is not None else "more than that"
    message = f"request body for {path} is larger than the limit of {limit} bytes ({size})"
    await send_error(send, 413, "payload_too_large", message, close=True)
