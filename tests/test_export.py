"""ONNX export: the exported graph gives the same maps and scores as PyTorch, on random and real parts."""

import numpy as np
import pytest
from tiny_model import assert_same_prediction, sample_source, train_tiny

from core.settings import Settings
from iumad.cli import main
from model.checkpoint import ONNX_FILE, save_version
from model.data.batches import InspectionInput
from model.errors import CheckpointError
from model.export import export_onnx, load_serving_model, onnx_model, serving_backend
from model.inference import InspectionModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    trained = train_tiny(("alpha", "beta"))
    model = InspectionModel(trained.net, trained.manifest)
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return trained, model, path


def _parts():
    rng = np.random.default_rng(3)
    random_part = InspectionInput(
        rng.integers(0, 256, (72, 72, 3), dtype=np.uint8),
        (0.4 + 0.1 * rng.random((72, 72))).astype(np.float32),
        None,
    )
    rgb, depth = sample_source(11)()
    return [random_part, InspectionInput(rgb, depth, "beta"), InspectionInput(rgb, None, "alpha")]


def test_onnx_matches_pytorch_within_1e_4(exported):
    _, model, path = exported
    served = onnx_model(model.net, model.manifest, path)
    for ours, theirs in zip(model.predict(_parts()), served.predict(_parts()), strict=True):
        assert_same_prediction(ours, theirs)


def test_batch_axis_is_dynamic(exported):
    _, model, path = exported
    served = onnx_model(model.net, model.manifest, path)
    single = served.predict(_parts()[:1])[0]
    batched = served.predict(_parts())[0]
    np.testing.assert_allclose(single.anomaly_map, batched.anomaly_map, atol=1e-5)


def test_serving_loader_uses_the_versions_own_checked_onnx_file(exported, tmp_path):
    trained, _, path = exported
    directory = save_version(trained.net, trained.manifest, tmp_path / "v", extra_files={ONNX_FILE: path})
    model = load_serving_model(directory, backend="onnxruntime")
    assert model.backend == "onnxruntime"
    (directory / ONNX_FILE).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_serving_model(directory, backend="onnxruntime")
    bare = save_version(trained.net, trained.manifest, tmp_path / "bare")
    with pytest.raises(CheckpointError, match="no model.onnx"):
        load_serving_model(bare, backend="onnxruntime")


def test_export_command_reports_parity_and_refuses_bad_input(exported, tmp_path, capsys):
    trained, _, _ = exported
    directory = save_version(trained.net, trained.manifest, tmp_path / "v")
    assert main(["export", "--model", str(directory), "--out", str(tmp_path / "m.onnx")]) == 0
    assert '"max_abs_map"' in capsys.readouterr().out
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "x.onnx")]) == 2
    assert main(["export", "--model", str(directory), "--out", str(tmp_path / "x.txt")]) == 2


def test_gateway_runtime_serves_from_onnxruntime_and_hot_swaps(exported, tmp_path):
    from service.runtime import ModelRuntime

    trained, model, path = exported
    first = save_version(trained.net, trained.manifest, tmp_path / "v1", extra_files={ONNX_FILE: path})
    runtime = ModelRuntime(backend="onnxruntime", max_batch_wait_ms=1)
    runtime.start()
    try:
        runtime.load_and_swap(first)
        assert runtime.model.backend == "onnxruntime"
        item = _parts()[1]
        result = runtime.submit(item, runtime.prepare(item)).result(timeout=60)
        expected = model.predict([item])[0]
        assert result.prediction.raw_score == pytest.approx(expected.raw_score, abs=1e-4)
        bare = save_version(trained.net, trained.manifest, tmp_path / "bare")
        with pytest.raises(CheckpointError):
            runtime.load_and_swap(bare)  # no model.onnx: refused, the old version keeps serving
        assert runtime.version == trained.manifest.version and runtime.model.backend == "onnxruntime"
    finally:
        runtime.close()


def test_auto_backend_serves_the_onnx_graph_on_a_cpu_and_pytorch_without_one(exported, tmp_path, caplog):
    trained, _, path = exported
    with_graph = save_version(trained.net, trained.manifest, tmp_path / "v", extra_files={ONNX_FILE: path})
    bare = save_version(trained.net, trained.manifest, tmp_path / "bare")
    assert load_serving_model(with_graph).backend == "onnxruntime"  # auto is the default
    assert load_serving_model(with_graph, backend="torch").backend == "torch"
    with caplog.at_level("INFO", logger="model.export"):
        old = load_serving_model(bare, backend="auto")
    assert type(old) is InspectionModel and old.backend == "torch"
    assert "has no model.onnx: serving it with PyTorch" in caplog.text
    assert serving_backend(with_graph, trained.manifest, "auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="unknown inference backend 'tensorrt'"):
        serving_backend(with_graph, trained.manifest, "tensorrt", "cpu")


def test_backbone_weights_of_ones_own_are_served_by_pytorch_never_dropped(exported, tmp_path):
    trained, _, path = exported
    with_graph = save_version(trained.net, trained.manifest, tmp_path / "v", extra_files={ONNX_FILE: path})
    weights = tmp_path / "backbone.safetensors"
    assert serving_backend(with_graph, trained.manifest, "auto", "cpu", weights) == "torch"
    with pytest.raises(CheckpointError, match="IUMAD_BACKBONE_WEIGHTS applies to the PyTorch backend"):
        serving_backend(with_graph, trained.manifest, "onnxruntime", "cpu", weights)
    with pytest.raises(ValueError, match="IUMAD_BACKBONE_WEIGHTS applies to the PyTorch backend only"):
        Settings(data_dir=tmp_path, inference_backend="onnxruntime", backbone_weights=weights)


def test_the_runtime_and_metrics_name_the_backend_in_use(exported, tmp_path):
    from prometheus_client import generate_latest

    from service.metrics import REGISTRY
    from service.runtime import ModelRuntime

    trained, _, path = exported
    directory = save_version(trained.net, trained.manifest, tmp_path / "v", extra_files={ONNX_FILE: path})
    runtime = ModelRuntime(max_batch_wait_ms=1)
    assert runtime.backend == "auto" and runtime.status().backend is None
    runtime.load_and_swap(directory)
    assert runtime.status().backend == "onnxruntime"
    assert 'iumad_active_model_info{backend="onnxruntime"' in generate_latest(REGISTRY).decode()
