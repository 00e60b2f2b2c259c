"""`POST /enroll-object`, `/jobs` and `POST /models/{v}/activate` over HTTP, against a private real Redis.

The gateway runs in-process (TestClient) without a worker: these tests are about what is accepted,
refused, stored and queued. Every refusal must be a clear 4xx with nothing stored and nothing queued.
"""

from __future__ import annotations

import errno
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from service_processes import mvtec_zip
from service_support import build_version, png_bytes, service_settings, tiff_bytes

from core.settings import Settings
from iumad.embedded import free_port
from service.app import create_app
from service.executors import BackgroundProcesses
from store.connection import connect_redis
from store.job_store import JobStore
from store.registry import ModelRegistry

OPERATOR, CAMERA = "operator-key", "camera-key"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return service_settings(
        tmp_path / "data",
        operator_api_keys=[OPERATOR],
        inspect_api_keys=[CAMERA],
        min_enroll_samples=5,
        max_enroll_bytes=150 * 1024 * 1024,
    )


@pytest.fixture
def client(settings: Settings, redis: Redis) -> Iterator[TestClient]:
    with TestClient(create_app(settings, redis), headers={"X-API-Key": OPERATOR}) as test_client:
        yield test_client


def _rgb(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def _depth(seed: int, size: int = 32) -> np.ndarray:
    return (0.4 + 0.01 * np.random.default_rng(seed).random((size, size))).astype(np.float32)


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _pairs(count: int, size: int = 32) -> dict[str, bytes]:
    members = {f"{i:03d}.png": png_bytes(_rgb(i, size)) for i in range(count)}
    return members | {f"{i:03d}.tiff": tiff_bytes(_depth(i, size)) for i in range(count)}


def _symlink_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as bundle:
        for name, data in _pairs(6).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("006.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        bundle.addfile(link)
    return buffer.getvalue()


def _bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("000.png", b"\0" * (80 * 1024 * 1024))
    return buffer.getvalue()


def _nothing_stored(settings: Settings, redis: Redis) -> None:
    stored = (
        [p for p in settings.samples_dir.rglob("*") if p.is_file()] if settings.samples_dir.exists() else []
    )
    uploads = (
        list((settings.data_dir / "uploads").rglob("*")) if (settings.data_dir / "uploads").exists() else []
    )
    assert stored == [] and uploads == []
    assert Queue(settings.queue_name, connection=redis).count == 0
    assert redis.zcard("iumad:jobs") == 0


BAD_INPUTS = {
    "empty archive": (
        {"object": "part"},
        {"archive": ("a.zip", _zip({}))},
        422,
        "validation_error",
        "no files",
    ),
    "zero-byte archive": ({"object": "part"}, {"archive": ("a.zip", b"")}, 422, "validation_error", "empty"),
    "not an archive": (
        {"object": "part"},
        {"archive": ("a.zip", b"hello world" * 10)},
        415,
        "unsupported_media_type",
        "not a .zip",
    ),
    "truncated archive": (
        {"object": "part"},
        {"archive": ("a.zip", _zip(_pairs(6))[:-200])},
        400,
        "invalid_input",
        "corrupt",
    ),
    "../ path": (
        {"object": "part"},
        {"archive": ("a.zip", _zip(_pairs(6) | {"../../x.png": b"x"}))},
        422,
        "unsafe_archive",
        "outside",
    ),
    "absolute path": (
        {"object": "part"},
        {"archive": ("a.zip", _zip(_pairs(6) | {"/tmp/x.png": b"x"}))},
        422,
        "unsafe_archive",
        "absolute",
    ),
    "symlink": ({"object": "part"}, {"archive": ("a.tar.gz", _symlink_tar())}, 422, "unsafe_archive", "link"),
    "zip bomb": ({"object": "part"}, {"archive": ("a.zip", _bomb())}, 413, "archive_too_large", "zip bomb"),
    "unpaired files": (
        {"object": "part"},
        {"archive": ("a.zip", _zip(_pairs(6) | {"006.png": png_bytes(_rgb(6))}))},
        422,
        "invalid_samples",
        "invalid",
    ),
    "mixed sizes": (
        {"object": "part"},
        {
            "archive": (
                "a.zip",
                _zip(_pairs(6) | {"006.png": png_bytes(_rgb(6, 48)), "006.tiff": tiff_bytes(_depth(6, 48))}),
            )
        },
        422,
        "invalid_samples",
        "invalid",
    ),
    "bad object name": (
        {"object": "Bad Name!"},
        {"archive": ("a.zip", _zip(_pairs(6)))},
        422,
        "validation_error",
        "object",
    ),
    "too few samples": (
        {"object": "part"},
        {"archive": ("a.zip", _zip(_pairs(3)))},
        422,
        "validation_error",
        "too few samples",
    ),
    "not multipart": ({"object": "part"}, {}, 415, "unsupported_media_type", "multipart/form-data"),
    "no samples": ({"object": "part"}, {"note": ("note.txt", b"")}, 422, "validation_error", "archive"),
    "bad holdout": (
        {"object": "part", "holdout_fraction": "0.9"},
        {"archive": ("a.zip", _zip(_pairs(6)))},
        422,
        "validation_error",
        "holdout_fraction",
    ),
    "zero max_minutes": (
        {"object": "part", "max_minutes": "0"},
        {"archive": ("a.zip", _zip(_pairs(6)))},
        422,
        "validation_error",
        "max_minutes",
    ),
    "negative max_minutes": (
        {"object": "part", "max_minutes": "-3"},
        {"archive": ("a.zip", _zip(_pairs(6)))},
        422,
        "validation_error",
        "max_minutes",
    ),
    "max_minutes above the server's limit": (
        {"object": "part", "max_minutes": "61"},
        {"archive": ("a.zip", _zip(_pairs(6)))},
        422,
        "validation_error",
        "IUMAD_ENROLL_MAX_MINUTES_LIMIT",
    ),
    "path in a file name": (
        {"object": "part"},
        [("files", ("../000.png", png_bytes(_rgb(0))))],
        422,
        "unsafe_archive",
        "no paths",
    ),
    "unknown field": (
        {"object": "part", "epochs": "9"},
        {"archive": ("a.zip", _zip(_pairs(6)))},
        422,
        "validation_error",
        "epochs",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_4xx_and_nothing_is_stored(
    client: TestClient, settings: Settings, redis: Redis, case: str
) -> None:
    data, files, status, code, text = BAD_INPUTS[case]
    response = client.post("/enroll-object", data=data, files=files or None)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and text in (error["message"] + str(error.get("details", ""))), error
    _nothing_stored(settings, redis)


def test_rejects_are_listed_file_by_file(client: TestClient, settings: Settings, redis: Redis) -> None:
    members = _pairs(6) | {"006.png": png_bytes(_rgb(6)), "007.tiff": tiff_bytes(_depth(7))}
    response = client.post(
        "/enroll-object", data={"object": "part"}, files={"archive": ("a.zip", _zip(members))}
    )
    assert response.status_code == 422
    details = {item["file"]: item["reason"] for item in response.json()["error"]["details"]}
    assert details == {
        "006.png": "RGB image without a depth file (the other samples have depth)",
        "007.tiff": "depth file without an RGB image",
    }


def test_accepted_enrolment_is_stored_and_queued(
    client: TestClient, settings: Settings, redis: Redis, synthetic_root: Path
) -> None:
    response = client.post(
        "/enroll-object",
        data={"object": "disc", "holdout_fraction": "0.25"},
        files={"archive": ("disc.zip", mvtec_zip(synthetic_root, "disc"))},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and body["status_url"].endswith(f"/jobs/{body['job_id']}")
    assert response.headers["location"] == body["status_url"]
    assert body["enrolment"]["train_samples"] == 6 and body["enrolment"]["holdout_samples"] == 2
    stored = settings.samples_dir / "disc" / body["job_id"]
    assert (stored / "enrolment.json").is_file() and len(list((stored / "train" / "rgb").iterdir())) == 6
    assert not (settings.data_dir / "uploads" / body["job_id"]).exists()
    assert Queue(settings.queue_name, connection=redis).job_ids == [body["job_id"]]
    job = client.get(body["status_url"]).json()
    assert (job["status"], job["object"], job["progress"]) == ("queued", "disc", 0.0)
    assert [item["job_id"] for item in client.get("/jobs").json()["jobs"]] == [body["job_id"]]

    again = client.post(
        "/enroll-object",
        data={"object": "disc"},
        files={"archive": ("disc.zip", mvtec_zip(synthetic_root, "disc"))},
    )
    assert (
        again.status_code == 409 and "already has a queued enrolment job" in again.json()["error"]["message"]
    )

    cancel = client.post(f"/jobs/{body['job_id']}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] == "canceled"
    assert not stored.exists(), "a canceled enrolment's samples are removed"
    assert Queue(settings.queue_name, connection=redis).count == 0
    assert client.post(f"/jobs/{body['job_id']}/cancel").status_code == 409
    assert client.get("/jobs/nope").status_code == 404


def test_a_failed_job_is_retried_on_its_stored_samples_without_a_second_upload(
    client: TestClient, settings: Settings, redis: Redis, synthetic_root: Path
) -> None:
    archive = {"archive": ("disc.zip", mvtec_zip(synthetic_root, "disc"))}
    first = client.post("/enroll-object", data={"object": "disc", "max_minutes": "2"}, files=archive).json()
    queue = Queue(settings.queue_name, connection=redis)
    queue.empty()
    jobs = JobStore(redis, settings.redis_key_prefix)
    assert client.post(f"/jobs/{first['job_id']}/retry").status_code == 409  # queued, not failed
    jobs.finish(first["job_id"], "failed", "training process killed")  # what a killed job becomes

    retry = client.post(f"/jobs/{first['job_id']}/retry")
    assert retry.status_code == 202, retry.text
    body = retry.json()
    assert body["status"] == "queued" and body["job_id"] != first["job_id"]
    assert retry.headers["location"].endswith(f"/jobs/{body['job_id']}")
    assert body["options"]["retry_of"] == first["job_id"] and body["options"]["max_minutes"] == 2.0
    assert body["enrolment"]["train_samples"] == first["enrolment"]["train_samples"]
    assert queue.job_ids == [body["job_id"]]
    moved = settings.samples_dir / "disc" / body["job_id"]
    assert (moved / "enrolment.json").is_file() and not (
        settings.samples_dir / "disc" / first["job_id"]
    ).exists()
    assert json.loads((moved / "enrolment.json").read_text())["enrolment_id"] == body["job_id"]

    reserved = client.post("/enroll-object", data={"object": "disc"}, files=archive)
    assert reserved.status_code == 409  # the retry holds its object like an upload does
    assert client.post(f"/jobs/{body['job_id']}/cancel").json()["status"] == "canceled"
    again = client.post(f"/jobs/{first['job_id']}/retry")  # its samples went to the retry, now canceled
    assert again.status_code == 409 and "no longer stored" in again.json()["error"]["message"]
    assert client.post("/jobs/0123456789abcdef0123456789abcdef/retry").status_code == 404


def test_a_retry_waits_for_the_objects_open_job_and_needs_an_operator(
    client: TestClient, settings: Settings, redis: Redis, synthetic_root: Path
) -> None:
    archive = {"archive": ("disc.zip", mvtec_zip(synthetic_root, "disc"))}
    failed = client.post("/enroll-object", data={"object": "disc"}, files=archive).json()["job_id"]
    JobStore(redis, settings.redis_key_prefix).finish(failed, "failed", "out of memory")
    open_job = client.post("/enroll-object", data={"object": "disc"}, files=archive).json()["job_id"]
    refused = client.post(f"/jobs/{failed}/retry")
    assert refused.status_code == 409 and open_job in refused.json()["error"]["message"]
    assert (settings.samples_dir / "disc" / failed).is_dir(), "a refused retry keeps the samples"
    camera = client.post(f"/jobs/{failed}/retry", headers={"X-API-Key": CAMERA})
    assert camera.status_code == 403


def test_a_running_job_says_by_when_it_serves_and_a_finished_one_why_training_stopped(
    client: TestClient, settings: Settings, redis: Redis, synthetic_root: Path
) -> None:
    archive = {"archive": ("disc.zip", mvtec_zip(synthetic_root, "disc"))}
    job_id = client.post("/enroll-object", data={"object": "disc", "max_minutes": "2"}, files=archive).json()[
        "job_id"
    ]
    assert client.get(f"/jobs/{job_id}").json()["serving_by"] is None  # queued: not started yet
    jobs = JobStore(redis, settings.redis_key_prefix)
    jobs.update(job_id, status="running", started_at=1000.0)
    assert client.get(f"/jobs/{job_id}").json()["serving_by"] == 1000.0 + 120.0
    jobs.finish(
        job_id, "succeeded", "enrolled", metrics={"stop_reason": "converged", "converged_at_step": 350}
    )
    finished = client.get(f"/jobs/{job_id}").json()
    assert finished["serving_by"] is None and finished["stop_reason"] == "converged at step 350"


def test_flat_files_upload(client: TestClient, settings: Settings) -> None:
    files = [("files", (name, data)) for name, data in _pairs(6).items()]
    response = client.post("/enroll-object", data={"object": "flat"}, files=files)
    assert response.status_code == 202, response.text
    assert response.json()["enrolment"]["modalities"] == ["rgb", "depth"]


def test_already_enrolled_needs_replace(client: TestClient, settings: Settings, redis: Redis) -> None:
    directory = build_version(settings.models_dir, activate=False)  # objects alpha and beta
    ModelRegistry(redis, settings.models_dir).activate(directory.name)
    archive = {"archive": ("a.zip", _zip(_pairs(6)))}
    refused = client.post("/enroll-object", data={"object": "alpha"}, files=archive)
    assert refused.status_code == 409 and "replace=true" in refused.json()["error"]["message"]
    _nothing_stored(settings, redis)
    accepted = client.post("/enroll-object", data={"object": "alpha", "replace": "true"}, files=archive)
    assert accepted.status_code == 202 and accepted.json()["object"] == "alpha"


def test_operator_key_is_required(settings: Settings, redis: Redis) -> None:
    with TestClient(create_app(settings, redis)) as anonymous:
        archive = {"archive": ("a.zip", _zip(_pairs(6)))}
        assert anonymous.post("/enroll-object", data={"object": "p"}, files=archive).status_code == 401
        camera = anonymous.post(
            "/enroll-object", data={"object": "p"}, files=archive, headers={"X-API-Key": CAMERA}
        )
        assert camera.status_code == 403
        assert anonymous.post("/models/v1/activate", headers={"X-API-Key": CAMERA}).status_code == 403
    _nothing_stored(settings, redis)


def test_upload_over_the_limit_is_413(settings: Settings, redis: Redis) -> None:
    small = settings.model_copy(update={"max_enroll_bytes": 100_000})
    with TestClient(create_app(small, redis), headers={"X-API-Key": OPERATOR}) as test_client:
        response = test_client.post(
            "/enroll-object", data={"object": "part"}, files={"archive": ("a.zip", _zip(_pairs(12, size=64)))}
        )
    assert response.status_code == 413
    _nothing_stored(settings, redis)


def test_redis_down_is_503_with_a_clear_message(settings: Settings) -> None:
    dead = connect_redis(f"redis://127.0.0.1:{free_port()}/0")
    with TestClient(create_app(settings, dead), headers={"X-API-Key": OPERATOR}) as test_client:
        response = test_client.post(
            "/enroll-object", data={"object": "part"}, files={"archive": ("a.zip", _zip(_pairs(6)))}
        )
        assert response.status_code == 503 and response.headers["retry-after"]
        assert "Redis is unreachable" in response.json()["error"]["message"]
        assert test_client.get("/jobs").status_code == 503
        assert test_client.get("/readyz").status_code == 200  # inspection readiness does not need Redis
    assert not settings.samples_dir.exists()


def test_activate_checks_the_version(client: TestClient, settings: Settings, redis: Redis) -> None:
    first = build_version(settings.models_dir, "v20260101T000000-aaaaaa", activate=False)
    second = build_version(settings.models_dir, "v20260101T000000-bbbbbb", activate=False)
    response = client.post(f"/models/{first.name}/activate")
    assert response.status_code == 200 and response.json()["active"]["sequence"] == 1
    assert client.post(f"/models/{second.name}/activate", params={"expected_sequence": 0}).status_code == 409
    assert client.post("/models/v20990101T000000-nope00/activate").status_code == 404
    weights = second / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    corrupt = client.post(f"/models/{second.name}/activate")
    assert corrupt.status_code == 422 and "corrupt" in corrupt.json()["error"]["message"]
    assert ModelRegistry(redis, settings.models_dir).active().version == first.name


def test_an_upload_in_progress_holds_its_object_until_its_job_ends(
    client: TestClient, settings: Settings, redis: Redis, synthetic_root: Path
) -> None:
    jobs = JobStore(redis, settings.redis_key_prefix)
    assert jobs.reserve("disc", "upload-elsewhere") is None  # another gateway is still receiving one
    upload = {
        "data": {"object": "disc"},
        "files": {"archive": ("disc.zip", mvtec_zip(synthetic_root, "disc"))},
    }
    busy = client.post("/enroll-object", **upload)
    assert busy.status_code == 409 and "upload-elsewhere" in busy.json()["error"]["message"], busy.text
    _nothing_stored(settings, redis)
    jobs.release("disc", "upload-elsewhere")

    accepted = client.post("/enroll-object", **upload)
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    assert redis.ttl(jobs.reservation_key("disc")) == -1  # queued: held for the job's whole life
    again = client.post("/enroll-object", **upload | {"data": {"object": "disc", "replace": "true"}})
    assert again.status_code == 409 and job_id in again.json()["error"]["message"]
    jobs.finish(job_id, "canceled", "test")
    assert jobs.reserve("disc", "next-upload") is None  # finishing released it


def test_a_rejected_upload_releases_its_object(client: TestClient, settings: Settings, redis: Redis) -> None:
    rejected = client.post("/enroll-object", data={"object": "disc"}, files={"archive": ("x.zip", _bomb())})
    assert rejected.status_code == 413
    assert not redis.exists(JobStore(redis, settings.redis_key_prefix).reservation_key("disc"))


def test_a_reservation_left_by_a_finished_job_gives_way(redis: Redis, settings: Settings) -> None:
    jobs = JobStore(redis, settings.redis_key_prefix)
    jobs.create("old-job", "ring", False, {}, {})
    assert jobs.reserve("ring", "old-job") is None
    redis.hset(jobs.key("old-job"), "status", "failed")  # finished without releasing (a crash)
    assert jobs.reserve("ring", "new-job") is None
    assert jobs.reserve("ring", "third-job") == "new-job"


def test_samples_of_jobs_that_ended_without_a_version_are_removed(redis: Redis, settings: Settings) -> None:
    from store.samples import remove_unused_enrolments

    jobs = JobStore(redis, settings.redis_key_prefix)
    folders = {}
    for job_id, status in (
        ("crashed", "failed"),
        ("killed", "canceled"),
        ("kept", "succeeded"),
        ("open", None),
    ):
        folders[job_id] = settings.samples_dir / "disc" / job_id
        (folders[job_id] / "train").mkdir(parents=True)
        jobs.create(job_id, "disc", False, {}, {})
        if status is not None:
            redis.hset(jobs.key(job_id), "status", status)
    unknown = settings.samples_dir / "disc" / "no-record"
    unknown.mkdir()
    kept_for_retry = remove_unused_enrolments(settings.samples_dir, settings.models_dir, jobs, 3600.0)
    assert [path.name for path in kept_for_retry] == ["killed"], "a failed job's samples wait for a retry"
    redis.hset(jobs.key("crashed"), "finished_at", 0.0)  # ... until they have been kept long enough
    removed = remove_unused_enrolments(settings.samples_dir, settings.models_dir, jobs, 3600.0)
    assert [path.name for path in removed] == ["crashed"]
    assert folders["kept"].exists() and folders["open"].exists() and unknown.exists()


def test_a_gateway_receiving_its_limit_of_enrolments_answers_503(
    client: TestClient, settings: Settings, synthetic_root: Path
) -> None:
    state = client.app.state.iumad
    state.enrolment_uploads = settings.max_concurrent_enrolments  # that many uploads are arriving
    try:
        busy = client.post(
            "/enroll-object",
            data={"object": "disc"},
            files={"archive": ("d.zip", mvtec_zip(synthetic_root, "disc"))},
        )
    finally:
        state.enrolment_uploads = 0
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "60", busy.text
    accepted = client.post(
        "/enroll-object",
        data={"object": "disc"},
        files={"archive": ("d.zip", mvtec_zip(synthetic_root, "disc"))},
    )
    assert accepted.status_code == 202 and state.enrolment_uploads == 0


# ------------------------------------------------------------------------ multipart and disk limits

BOUNDARY = "iumad-test-boundary"


def _multipart(parts: list[tuple[str, bytes]], close: bool = True) -> bytes:
    """A raw multipart body from (Content-Disposition parameters, payload) pairs."""
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; {disposition}\r\n\r\n".encode() + payload + b"\r\n"
        for disposition, payload in parts
    )
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _object_part(name: str = "part") -> tuple[str, bytes]:
    return 'name="object"', name.encode()


def _file_parts(count: int) -> list[tuple[str, bytes]]:
    return [(f'name="files"; filename="{name}"', data) for name, data in list(_pairs(count).items())]


MULTIPART_REFUSALS = {
    "too many files": (
        [_object_part(), *_file_parts(8)],
        "multipart/form-data; boundary=" + BOUNDARY,
        413,
        "more than 12 files",
    ),
    "too many fields": (
        [_object_part(), *[('name="note"', b"x")] * 64, *_file_parts(6)],
        "multipart/form-data; boundary=" + BOUNDARY,
        400,
        "more than 64 form fields",
    ),
    "an oversized field": (
        [('name="object"', b"p" * (65 * 1024)), *_file_parts(6)],
        "multipart/form-data; boundary=" + BOUNDARY,
        413,
        "longer than 65536 bytes",
    ),
    "a part without a name": (
        [_object_part(), ('filename="a.zip"', _zip(_pairs(6)))],
        "multipart/form-data; boundary=" + BOUNDARY,
        400,
        "no field name",
    ),
    "no boundary": ([_object_part(), *_file_parts(6)], "multipart/form-data", 400, "no boundary"),
    "a foreign content type": ([_object_part()], "application/x-www-form-urlencoded", 415, "multipart"),
}


@pytest.mark.parametrize("case", list(MULTIPART_REFUSALS))
def test_multipart_limits_are_clear_refusals_that_store_nothing(
    settings: Settings, redis: Redis, case: str
) -> None:
    parts, content_type, status, text = MULTIPART_REFUSALS[case]
    few_files = settings.model_copy(update={"max_archive_members": 12})
    with TestClient(create_app(few_files, redis), headers={"X-API-Key": OPERATOR}) as test_client:
        response = test_client.post(
            "/enroll-object", content=_multipart(parts), headers={"Content-Type": content_type}
        )
    assert response.status_code == status, response.text
    assert text in response.json()["error"]["message"], response.text
    _nothing_stored(settings, redis)


@pytest.mark.parametrize("cut", ["inside a file", "before the closing boundary"])
def test_a_truncated_multipart_body_is_400_and_stores_nothing(
    client: TestClient, settings: Settings, redis: Redis, cut: str
) -> None:
    body = _multipart([_object_part(), *_file_parts(6)], close=False)
    body = body[: len(body) // 2] if cut == "inside a file" else body
    response = client.post(
        "/enroll-object", content=body, headers={"Content-Type": "multipart/form-data; boundary=" + BOUNDARY}
    )
    assert response.status_code == 400, response.text
    assert "ended before" in response.json()["error"]["message"]
    _nothing_stored(settings, redis)


def _disk_full(*_args, **_kwargs) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize(
    "where,archive",
    [
        ("service.uploads._DiskForm._write_file", ("a.zip", _zip(_pairs(6)))),
        ("store.archives._ByteBudget.copy", ("a.tar", _tar(_pairs(6)))),
        ("store.samples.publish_directory", ("a.zip", _zip(_pairs(6)))),
    ],
    ids=["receiving the body", "extracting a tar", "storing the samples"],
)
def test_a_full_disk_during_an_enrolment_is_503_and_leaves_nothing_behind(
    client: TestClient, settings: Settings, redis: Redis, monkeypatch, where: str, archive
) -> None:
    monkeypatch.setattr(where, _disk_full)
    # Ingest runs in the gateway's ingest processes, out of a monkeypatch's reach: run it here instead.
    in_this_process = BackgroundProcesses(lambda: ThreadPoolExecutor(1))
    monkeypatch.setattr(client.app.state.iumad, "ingest_pool", in_this_process)
    response = client.post("/enroll-object", data={"object": "part"}, files={"archive": archive})
    in_this_process.shutdown()
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "60"
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and "disk is full" in error["message"]
    assert str(settings.data_dir) not in error["message"]
    _nothing_stored(settings, redis)
    assert not redis.exists(JobStore(redis, settings.redis_key_prefix).reservation_key("part"))
