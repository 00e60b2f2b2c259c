"""Every error answer has one shape: `{"error": {"code": "...", "message": "..."}}`.

`model.errors.IumadError` subclasses name their kind (`code`); which HTTP status a kind answers is
decided here, in `STATUS_OF_KIND` (a kind not listed answers as its nearest listed base class). The
few errors only the gateway can raise (queue full, not ready, auth, body timeout) are defined here. FastAPI's own validation
and HTTP errors are re-shaped, and an unexpected exception becomes a 500 of the same shape with the
traceback logged, so a client never has to parse two formats.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.errors import (
    CheckpointError,
    ConflictError,
    InputError,
    IumadError,
    NotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from service.request_context import current_request_id
from store.archives import ArchiveTooLargeError, UnsafeArchiveError
from store.feedback import CorrectionImagesError
from store.pairing import SamplesRejectedError
from store.samples import EnrolmentInputError

log = logging.getLogger(__name__)

ENROL_HINT = (
    "nothing is enrolled yet: enrol an object first with POST /enroll-object (operator API key; multipart: "
    "object=<name>, archive=<.zip/.tar of normal RGB[+depth] pairs> or repeated files=<000.png, 000.tiff, ...>), "
    "wait for the job (GET /jobs/{id}) to succeed, then retry"
)


class ServiceUnavailableError(IumadError):
    """The gateway cannot take this request now; `retry_after_s` says when to try again."""

    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFullError(ServiceUnavailableError):
    code = "queue_full"


class InsufficientStorageError(ServiceUnavailableError):
    code = "insufficient_storage"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_full_is_503(what: str) -> Iterator[None]:
    """A full disk (or quota) while receiving or storing an upload is the gateway's condition, not the
    client's fault nor a bug: 503 with Retry-After, and no server path in the message."""
    try:
        yield
    except OSError as error:
        if error.errno not in DISK_FULL_ERRNOS:
            raise
        raise InsufficientStorageError(
            f"the gateway's disk is full; cannot {what} now; retry when space is freed", retry_after_s=60
        ) from error


class NotReadyError(ServiceUnavailableError):
    code = "not_ready"


class NothingEnrolledError(ConflictError):
    code = "nothing_enrolled"

    def __init__(self, message: str = ENROL_HINT) -> None:
        super().__init__(message)


class BodyTimeoutError(IumadError):
    """The client stopped sending its body: the connection is closed rather than held open."""

    code = "request_timeout"


class UnauthorizedError(IumadError):
    code = "unauthorized"


class ForbiddenError(IumadError):
    code = "forbidden"


class ValidationFailedError(IumadError):
    """A field value the schema cannot express (e.g. a non-finite threshold)."""

    code = "validation_error"


# Error kind -> HTTP status; `http_status_of` walks an error's base classes to the nearest entry.
STATUS_OF_KIND: dict[type[IumadError], int] = {
    IumadError: 400,
    InputError: 400,
    UnsupportedMediaError: 415,
    PayloadTooLargeError: 413,
    ArchiveTooLargeError: 413,
    NotFoundError: 404,
    ConflictError: 409,
    CheckpointError: 422,
    EnrolmentInputError: 422,
    UnsafeArchiveError: 422,
    SamplesRejectedError: 422,
    CorrectionImagesError: 422,
    ValidationFailedError: 422,
    BodyTimeoutError: 408,
    UnauthorizedError: 401,
    ForbiddenError: 403,
    ServiceUnavailableError: 503,
}


def http_status_of(error: IumadError) -> int:
    return next(STATUS_OF_KIND[kind] for kind in type(error).__mro__ if kind in STATUS_OF_KIND)


_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


def request_id_of(request: Request) -> str | None:
    """Also after the request-id middleware has returned (the 500 handler runs outside it)."""
    return request.scope.get("state", {}).get("request_id") or current_request_id()


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    headers = dict(headers or {})
    request_id = request_id_of(request)
    if request_id:
        headers.setdefault("X-Request-ID", request_id)
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def _field_name(location: Sequence[Any]) -> str:
    """('body', 'mask') -> 'mask'; ('path', 'name') -> 'name'; keeps nested indices."""
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    return ".".join(parts) or "request"


def validation_message(errors: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A readable one-line message and JSON-safe details (never echo uploaded bytes back)."""
    details = [
        {
            "field": _field_name(error.get("loc", ())),
            "message": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]
    message = "; ".join(f"{detail['field']}: {detail['message']}" for detail in details) or "invalid request"
    return message, details


async def handle_iumad_error(request: Request, error: IumadError) -> JSONResponse:
    headers = {}
    if isinstance(error, ServiceUnavailableError):
        headers["Retry-After"] = str(error.retry_after_s)
    if isinstance(error, UnauthorizedError):
        headers["WWW-Authenticate"] = 'ApiKey header="X-API-Key"'
    status = http_status_of(error)
    log.info("%s %s -> %d %s: %s", request.method, request.url.path, status, error.code, error)
    return error_response(request, status, error.code, str(error), error.details, headers)


async def handle_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    message, details = validation_message(error.errors())
    log.info("%s %s -> 422: %s", request.method, request.url.path, message)
    return error_response(request, 422, "validation_error", message, details)


async def handle_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    code = _CODES_BY_STATUS.get(error.status_code, "error" if error.status_code >= 500 else "bad_request")
    message = error.detail if isinstance(error.detail, str) else str(error.detail)
    if error.status_code == 404 and message == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path}"
    return error_response(request, error.status_code, code, message, headers=dict(error.headers or {}))


async def handle_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    request_id = request_id_of(request) or "unknown"
    log.exception(
        "unexpected error in %s %s", request.method, request.url.path, extra={"request_id": request_id}
    )
    return error_response(
        request,
        500,
        "internal_error",
        f"internal error (request id {request_id}); the gateway logged the details",
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(IumadError, handle_iumad_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
