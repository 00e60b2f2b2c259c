"""The published OpenAPI schema: FastAPI's, made to say what the gateway answers and accepts.

Three corrections, in one place, so that a client generated from `/openapi.json` works (issue 31):
- Every error status of every operation has the error envelope as its body (`ErrorEnvelope`), 422
  included: the gateway reshapes FastAPI's validation errors into it (service/errors.py).
- An optional field of a hand-written multipart body is declared by its type alone, not
  `anyOf [type, null]`: a form field is absent or a value, and generated clients send a declared
  `null` as the text "None".
- Nothing else is changed; the schema is built once and cached, as FastAPI does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable, machine-readable: invalid_input, not_found, conflict, ...")
    message: str = Field(description="For a person: what is wrong and what to do.")
    details: Any = Field(None, description="Per-field errors of a 422, or other structured detail.")


class ErrorEnvelope(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


def install_schema(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = published_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def published_schema(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(_component_schemas())
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            _errors_have_the_envelope(operation)
            _multipart_fields_are_not_nullable(operation)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema


def _component_schemas() -> dict[str, Any]:
    envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions = envelope.pop("$defs", {})
    return {"ErrorEnvelope": envelope, **definitions}


def _errors_have_the_envelope(operation: dict[str, Any]) -> None:
    for status, response in operation.get("responses", {}).items():
        if status.isdigit() and int(status) >= 400:
            response["content"] = {"application/json": {"schema": {"$ref": ENVELOPE_REF}}}
            response.setdefault("description", "An error, in the error envelope.")


def _multipart_fields_are_not_nullable(operation: dict[str, Any]) -> None:
    body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if not body or "properties" not in body.get("schema", {}):
        return
    for name, field in body["schema"]["properties"].items():
        variants = field.get("anyOf")
        if not variants:
            continue
        kept = [v for v in variants if v.get("type") != "null"]
        if len(kept) == 1 and len(kept) < len(variants):
            rest = {k: v for k, v in field.items() if k != "anyOf"}
            body["schema"]["properties"][name] = {**kept[0], **rest}
