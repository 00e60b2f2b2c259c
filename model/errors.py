"""Errors a user can cause. The CLI turns them into exit code 2, the gateway into a 4xx answer (the
status of each kind is the gateway's business: service/errors.py). `code` names the kind for machines."""

from __future__ import annotations

from typing import Any


class IumadError(Exception):
    """Base of every error caused by what a user sent or configured (never by a bug)."""

    code = "bad_request"
    details: Any = None  # JSON-safe specifics the answer lists, e.g. every rejected file


class InputError(IumadError):
    """Unreadable or inconsistent input data: a corrupt image, mismatched sizes, empty depth."""

    code = "invalid_input"


class UnsupportedMediaError(InputError):
    """A file in a format we do not read."""

    code = "unsupported_media_type"


class PayloadTooLargeError(IumadError):
    """An upload, a file in it, or what a file decodes to, over a configured limit."""

    code = "payload_too_large"


class NotFoundError(IumadError):
    code = "not_found"


class ConflictError(IumadError):
    code = "conflict"


class CheckpointError(IumadError):
    """A model version that cannot be loaded: foreign, corrupt, or of an unknown format version."""

    code = "invalid_checkpoint"
