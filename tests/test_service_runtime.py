"""The batching runtime seen through HTTP: batches change nothing, swaps change the version, queues bound."""

from __future__ import annotations

import copy
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from service_support import build_version, files_for, part, service_settings, wait_ready

from model.checkpoint import MANIFEST_FILE
from model.errors import CheckpointError
from model.inference import InspectionModel
from service.app import create_app


class GatedModel(InspectionModel):
    """Holds each model call until the test releases it, so a test can act while a batch is in flight."""

    def __init__(self, model: InspectionModel, version: str) -> None:
        manifest = copy.deepcopy(model.manifest)
        manifest.version = version
        super().__init__(model.net, manifest)
        self.entered = threading.Event()
        self.release = threading.Event()

    def predict_prepared(self, batch, objects):
        self.entered.set()
        assert self.release.wait(30), "the test never released the gate"
        return super().predict_prepared(batch, objects)


class ConfidentGraph:
    """The network of another model, with a classifier that is certain every part is `beta`."""

    name = "torch"

    def __init__(self, inner, beta_label: int) -> None:
        self.inner, self.beta_label = inner, beta_label

    def run(self, batch, labels):
        errors, probabilities = self.inner.run(batch, labels)
        confident = torch.zeros_like(probabilities)
        confident[:, self.beta_label] = 1.0
        return errors, confident


def renamed(model: InspectionModel, version: str, confident: bool = False) -> InspectionModel:
    manifest = copy.deepcopy(model.manifest)
    manifest.version = version
    if not confident:
        return InspectionModel(model.net, manifest)
    graph = ConfidentGraph(model.graph, model.by_name["beta"].label)
    return InspectionModel(model.net, manifest, graph=graph)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("data")
    build_version(data_dir / "models")
    return data_dir


@pytest.fixture(scope="module")
def client(data_dir):
    # A long batch wait so that concurrent requests really share batches.
    app = create_app(service_settings(data_dir, max_batch_size=8, max_batch_wait_ms=150.0, decode_threads=4))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


@pytest.fixture
def runtime(client):
    runtime = client.app.state.iumad.runtime
    original = runtime.model
    yield runtime
    runtime.swap(original)


def parts(count: int):
    return [part("alpha" if i % 2 else "beta", 400 + i, defect=i % 3 == 0) for i in range(count)]


def test_concurrent_requests_are_batched_and_answer_exactly_as_one_by_one(client, runtime):
    samples = parts(8)

    def inspect(sample):
        rgb, depth = sample
        response = client.post("/inspect", files=files_for(rgb, depth), data={"mask": "rle"})
        assert response.status_code == 200, response.text
        return response.json()

    one_by_one = [inspect(sample) for sample in samples]
    batches_before, largest_before = runtime.batches_run, runtime.largest_batch
    runtime.largest_batch = 0
    with ThreadPoolExecutor(len(samples)) as pool:
        together = list(pool.map(inspect, samples))
    assert runtime.largest_batch > 1, "the concurrent requests never shared a batch"
    assert runtime.batches_run - batches_before < len(samples)
    runtime.largest_batch = max(runtime.largest_batch, largest_before)
    for single, batched in zip(one_by_one, together, strict=True):
        assert batched["object"] == single["object"]
        assert batched["object_confidence"] == pytest.approx(single["object_confidence"], abs=1e-4)
        assert batched["raw_score"] == pytest.approx(single["raw_score"], rel=1e-4, abs=1e-4)
        assert batched["is_anomalous"] == single["is_anomalous"]
        assert batched["mask"] == single["mask"]


def test_swap_serves_the_new_model_from_the_next_request(client, runtime):
    rgb, depth = part("alpha", 1)
    before = client.post("/inspect", files=files_for(rgb, depth)).json()
    old = runtime.swap(renamed(runtime.model, "v-swapped"))
    after = client.post("/inspect", files=files_for(rgb, depth)).json()
    assert old.version == before["model_version"]
    assert after["model_version"] == "v-swapped"
    assert after["raw_score"] == pytest.approx(before["raw_score"], abs=1e-5)  # same weights, new name
    assert (
        'iumad_active_model_info{backend="torch",device="cpu",model_version="v-swapped"}'
        in client.get("/metrics").text
    )


def test_a_batch_in_flight_finishes_on_the_model_it_started_with(client, runtime):
    serving = runtime.model
    gated = GatedModel(serving, "v-gated")
    runtime.swap(gated)
    rgb, depth = part("alpha", 2)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(client.post, "/inspect", files=files_for(rgb, depth))
        assert gated.entered.wait(30)
        runtime.swap(renamed(serving, "v-next"))  # while the gated batch is running
        gated.release.set()
        assert in_flight.result(30).json()["model_version"] == "v-gated"
    assert client.post("/inspect", files=files_for(rgb, depth)).json()["model_version"] == "v-next"


def test_load_and_swap_loads_a_version_from_disk(client, runtime, data_dir):
    new_dir = build_version(data_dir / "models", version="v20260102T000000-test02", activate=False)
    model = runtime.load_and_swap(new_dir)
    assert model.version == "v20260102T000000-test02"
    rgb, _ = part("beta", 3)
    assert client.post("/inspect", files=files_for(rgb)).json()["model_version"] == model.version


def test_a_failed_load_keeps_the_old_model_serving_and_says_why(client, runtime, data_dir):
    serving = runtime.model.version
    broken = data_dir / "models" / "v20260103T000000-broken"
    shutil.copytree(data_dir / "models" / "v20260101T000000-test01", broken)
    (broken / MANIFEST_FILE).write_text('{"format_version": 1, "version": "x"')  # truncated JSON
    with pytest.raises(CheckpointError):
        runtime.load_and_swap(broken)

    rgb, _ = part("beta", 4)
    assert client.post("/inspect", files=files_for(rgb)).json()["model_version"] == serving
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["state"] == "ready"
    assert ready.json()["backend"] in ("torch", "onnxruntime")
    assert "not valid JSON" in ready.json()["last_load_error"]["message"]
    assert ready.json()["last_load_error"]["version_dir"].endswith("v20260103T000000-broken")
    metrics = client.get("/metrics").text
    assert (
        "iumad_model_load_failing 1.0" in metrics and 'iumad_model_loads_total{outcome="failure"}' in metrics
    )
    shutil.rmtree(broken)


def test_a_given_object_that_the_classifier_confidently_disputes_gets_a_warning(client, runtime):
    runtime.swap(renamed(runtime.model, "v-confident", confident=True))
    rgb, depth = part("alpha", 6)
    disputed = client.post("/inspect", files=files_for(rgb, depth), data={"object": "alpha"}).json()
    agreed = client.post("/inspect", files=files_for(rgb, depth), data={"object": "beta"}).json()
    assert disputed["object"] == "alpha" and disputed["object_source"] == "given"
    assert len(disputed["warnings"]) == 1 and "'beta'" in disputed["warnings"][0]
    assert agreed["warnings"] == []


def test_a_full_queue_answers_503_with_retry_after_and_recovers(data_dir):
    app = create_app(service_settings(data_dir, max_batch_size=1, max_queue=1, max_batch_wait_ms=0.0))
    with TestClient(app) as client:
        wait_ready(client)
        runtime = client.app.state.iumad.runtime
        gated = GatedModel(runtime.model, "v-gated")
        runtime.swap(gated)
        rgb, _ = part("beta", 5)
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(client.post, "/inspect", files=files_for(rgb))
            assert gated.entered.wait(30)  # the inference thread holds the first request
            queued = pool.submit(client.post, "/inspect", files=files_for(rgb))
            for _ in range(600):
                if runtime.queue_depth == 1:
                    break
                threading.Event().wait(0.01)
            refused = client.post("/inspect", files=files_for(rgb))
            gated.release.set()
            assert running.result(30).status_code == 200 and queued.result(30).status_code == 200
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        assert client.post("/inspect", files=files_for(rgb)).status_code == 200


def test_a_lone_request_runs_at_once_instead_of_waiting_for_batch_mates(data_dir):
    app = create_app(service_settings(data_dir, max_batch_size=8, max_batch_wait_ms=3000.0))
    with TestClient(app) as client:
        wait_ready(client)
        rgb, depth = part("alpha", 7)
        response = client.post("/inspect", files=files_for(rgb, depth))
        assert response.status_code == 200, response.text
        assert response.json()["timings_ms"]["queue"] < 1500  # nobody else was on the way


def test_a_full_gateway_refuses_an_upload_before_reading_it(data_dir):
    app = create_app(service_settings(data_dir, max_queue=2))
    with TestClient(app) as client:
        wait_ready(client)
        runtime = client.app.state.iumad.runtime
        held = [runtime.admit(), runtime.admit()]  # two requests still being read or decoded
        garbage = {"Content-Type": "multipart/form-data; boundary=x"}
        refused = client.post("/inspect", content=b"not a multipart body", headers=garbage)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
        assert refused.headers["Retry-After"] == "1"
        held[0].release()
        held[0].release()  # releasing twice gives back one place, not two
        unreadable = client.post("/inspect", content=b"not a multipart body", headers=garbage)
        assert unreadable.status_code == 400  # admitted, then read
        assert client.post("/inspect", content=b"not a multipart body", headers=garbage).status_code == 400
        held[1].release()
        rgb, _ = part("beta", 5)
        assert client.post("/inspect", files=files_for(rgb)).status_code == 200
