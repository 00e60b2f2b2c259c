"""A client generated from `/openapi.json` works as an integrator expects: it enrols, follows the job
and inspects with typed models, sends the API key, and reads every error as the envelope.

`openapi-python-client` (the dev extra) generates it with `--fail-on-warning` from the schema of a
real gateway (`iumad serve`: embedded Redis + worker, tiny model settings), exactly as docs/API.md says.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_processes import http_ready, mvtec_zip, start_gateway, stop_process, tail, tiny_env, wait_until

from model.data.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.slow

OPERATOR = "operator-key-for-the-generated-client"
GENERATOR = Path(sys.executable).with_name("openapi-python-client")
CONFIG = "content_type_overrides:\n  image/png: application/octet-stream\n"  # docs/API.md says why


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("client")
    env = tiny_env(base / "data", None, IUMAD_OPERATOR_API_KEYS=f'["{OPERATOR}"]')
    process, url = start_gateway(env, base / "gateway.log")
    try:
        wait_until(lambda: http_ready(url) or process.poll() is not None, 120, 0.3, "the gateway")
        assert process.poll() is None, tail(base / "gateway.log")
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def client_package(gateway: str, tmp_path_factory: pytest.TempPathFactory):
    if not GENERATOR.exists():
        pytest.skip("the dev extra installs openapi-python-client")
    folder = tmp_path_factory.mktemp("generated")
    (folder / "openapi.json").write_text(json.dumps(httpx.get(gateway + "/openapi.json", timeout=10).json()))
    (folder / "config.yaml").write_text(CONFIG)
    generated = subprocess.run(
        [str(GENERATOR), "generate", "--path", "openapi.json", "--meta", "none", "--output-path",
         "iumad_client", "--config", "config.yaml", "--fail-on-warning"],
        cwd=folder, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{GENERATOR.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    assert generated.returncode == 0, generated.stdout + generated.stderr
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("iumad_client")
    finally:
        sys.path.remove(str(folder))


def test_enrol_follow_and_inspect_with_the_generated_client(gateway, client_package, tmp_path):
    from iumad_client.api.enrolment import enroll_object_enroll_object_post as enroll
    from iumad_client.api.inspect import inspect_inspect_post as inspect
    from iumad_client.api.jobs import get_job_jobs_job_id_get as get_job
    from iumad_client.models import (
        EnrollObjectEnrollObjectPostBody,
        EnrolmentAccepted,
        ErrorEnvelope,
        InspectInspectPostBody,
        InspectResponse,
        Job,
    )
    from iumad_client.types import File

    client = client_package.AuthenticatedClient(
        base_url=gateway, token=OPERATOR, prefix="", auth_header_name="X-API-Key", timeout=httpx.Timeout(60)
    )
    anonymous = client_package.Client(base_url=gateway)
    write_synthetic_dataset(tmp_path, objects=1, size=64, n_train=12, n_validation=4, n_test=2, seed=2)
    name = next(p.name for p in tmp_path.iterdir() if p.is_dir())
    archive = File(payload=io.BytesIO(mvtec_zip(tmp_path, name)), file_name=f"{name}.zip")

    refused = enroll.sync_detailed(
        client=anonymous, body=EnrollObjectEnrollObjectPostBody(object_=name, archive=archive)
    )
    assert refused.status_code == 401 and isinstance(refused.parsed, ErrorEnvelope)
    assert refused.parsed.error.code == "unauthorized"

    archive.payload.seek(0)
    accepted = enroll.sync(
        client=client, body=EnrollObjectEnrollObjectPostBody(object_=name, archive=archive)
    )
    assert isinstance(accepted, EnrolmentAccepted), accepted

    def served() -> Job | None:
        job = get_job.sync(accepted.job_id, client=client)
        assert isinstance(job, Job), job
        assert job.status.value not in ("failed", "canceled", "needs_review"), job.message
        return job if job.version_serving else None

    job = wait_until(served, 120, 0.5, "the enrolment to serve")
    assert job.status.value == "succeeded"

    rgb = next((tmp_path / name / "test" / "good" / "rgb").glob("*.png"))
    depth = tmp_path / name / "test" / "good" / "xyz" / f"{rgb.stem}.tiff"
    body = InspectInspectPostBody(
        rgb=File(payload=rgb.open("rb"), file_name=rgb.name),
        depth=File(payload=depth.open("rb"), file_name=depth.name),
        object_=name,
    )
    answer = inspect.sync(client=client, body=body)
    assert isinstance(answer, InspectResponse), answer
    assert answer.object_ == name and answer.model_version == job.version

    missing = get_job.sync_detailed("no-such-job", client=client)
    assert missing.status_code == 404 and isinstance(missing.parsed, ErrorEnvelope)
    assert missing.parsed.error.code == "not_found"
