"""Errors a user can cause. The CLI turns them into exit code 2, the gateway into a 4xx answer."""

from __future__ import annotations

from typing import Any


class IumadError(Exception):
    """Base of every error caused by what a user sent or configured (never by a bug)."""

    http_status = 400
    code = "bad_request"
    details: Any = None  # JSON-safe specifics the answer lists, e.g. every rejected file


class InputError(IumadError):
    """Unreadable or inconsistent input data: a corrupt image, mismatched sizes, empty depth."""

    http_status = 400
    code = "invalid_input"


class UnsupportedMediaError(InputError):
    """A file in a format we do not read."""

    http_status = 415
    code = "unsupported_media_type"


class PayloadTooLargeError(IumadError):
    """An upload, a file in it, or what a file decodes to, over a configured limit."""

    http_status = 413
    code = "payload_too_large"


class NotFoundError(IumadError):
    http_status = 404
    code = "not_found"


class ConflictError(IumadError):
    http_status = 409
    code = "conflict"


class CheckpointError(IumadError):
    """A model version that cannot be loaded: foreign, corrupt, or of an unknown format version."""

    http_status = 422
    code = "invalid_checkpoint"
