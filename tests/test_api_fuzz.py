"""The whole HTTP API fuzzed from its own OpenAPI schema (schemathesis): generated and mutated
bodies, headers and parameters on every operation, against the real app with a real Redis and a
served model. Whatever a client sends, the answer is below 500 (or a 503 that says when to retry)
and every error is in the JSON envelope."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from redis import Redis
from schemathesis import GenerationMode
from service_processes import start_redis
from service_support import build_version, service_settings, wait_ready

from service.app import create_app
from store.connection import connect_redis
from store.registry import ModelRegistry

pytestmark = pytest.mark.slow  # real processes (make test-fast leaves them out)

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def served_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    server = start_redis(data_dir / "redis")
    redis: Redis = connect_redis(server.url)
    try:
        version = build_version(data_dir / "models")
        ModelRegistry(redis, data_dir / "models").activate(version.name)
        app = create_app(service_settings(data_dir, max_enroll_bytes=8 * 1024 * 1024), redis)
        with TestClient(app) as client:
            wait_ready(client)
            yield client
    finally:
        redis.close()
        server.stop()


@pytest.fixture
def subnormal_floats() -> Iterator[None]:
    """hypothesis refuses to generate floats while subnormals are flushed to zero, which
    `model/network/selective_scan.py` switches on at import (for the scan's speed; issue #15)."""
    import torch

    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        torch.set_flush_denormal(True)


def _operations(schema) -> list:
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(
    served_app: TestClient, mode: GenerationMode, subnormal_floats
) -> None:
    """Positive cases follow the schema; negative ones break it (wrong types, missing fields, ...)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", served_app.app)
    operations = _operations(schema)
    assert len(operations) >= 15, [operation.label for operation in operations]
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_without_a_server_error(case) -> None:
            response = case.call()
            retry_later = response.status_code == 503 and "retry-after" in {
                k.lower() for k in response.headers
            }
            assert response.status_code < 500 or retry_later, (
                case.operation.label,
                response.status_code,
                response.text[:500],
            )
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body

        try:
            answers_without_a_server_error()
        except Unsatisfiable:  # an operation without inputs (GET /healthz) has nothing to break
            assert mode is GenerationMode.NEGATIVE and not _has_inputs(operation), operation.label


def _has_inputs(operation) -> bool:
    definition = operation.definition.raw
    return bool(definition.get("parameters") or definition.get("requestBody"))
