"""ONNX export of a model version and an onnxruntime backend with the same interface as PyTorch's.

The exported graph runs everything that depends on pixels: both frozen backbone passes, the two
reconstruction branches with the selective scan (unrolled for the grid of the configured image size),
IBFM and the per-token error maps, plus the object probabilities. What depends on the chosen object
(per-object normalisation, upsampling, smoothing, the image score) is `InspectionModel.finish`,
shared by both backends, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from model.checkpoint import ONNX_FILE, Manifest, load_version, read_manifest, verify_file
from model.data.batches import PreparedBatch
from model.errors import CheckpointError
from model.inference import InspectionModel, TorchGraph
from model.network.feature_extractor import MultiScaleFeatures
from model.network.iumad import IUMADNet

log = logging.getLogger(__name__)

OPSET = 17
INPUTS = ("rgb", "depth", "has_depth", "objects")
OUTPUTS = ("errors", "probabilities")


class InferenceGraph(nn.Module):
    """(rgb, depth images in [0, 1], has_depth 0/1, objects: label or -1 = predict) -> (error maps
    (B, 2, h, w), object probabilities)."""

    def __init__(self, features: MultiScaleFeatures, net: IUMADNet) -> None:
        super().__init__()
        self.features = features
        self.net = net

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, has_depth: torch.Tensor, objects: torch.Tensor):
        has_depth_bool = has_depth > 0.5
        rgb_features = self.features(rgb)
        depth_features = self.features(depth) * has_depth.view(-1, 1, 1, 1)
        return self.net.error_maps(
            rgb_features, depth_features, torch.ones_like(has_depth_bool), has_depth_bool, objects
        )


def export_onnx(model: InspectionModel, out: Path) -> Path:
    """Write the inference graph of `model` to `out` with a dynamic batch axis."""
    if not isinstance(model.graph, TorchGraph):
        raise CheckpointError("export from the PyTorch model (the version's files), not an ONNX-served one")
    graph = InferenceGraph(model.graph.features, model.net).eval().cpu()
    size = model.config.image_size
    example = (
        torch.rand(2, 3, size, size),
        torch.rand(2, 3, size, size),
        torch.ones(2),
        torch.tensor([0, -1], dtype=torch.long),
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.name + ".tmp")
    with torch.no_grad():
        torch.onnx.export(
            graph,
            example,
            str(temporary),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in (*INPUTS, *OUTPUTS)},
            opset_version=OPSET,
            dynamo=False,
        )
    temporary.replace(out)
    return out


def onnx_providers(device: str) -> list[str]:
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxGraph:
    """The exported inference graph in onnxruntime (backbone included: its weights are the export's)."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime

        if not Path(onnx_path).is_file():
            raise CheckpointError(f"{onnx_path} does not exist: export the version first (iumad export)")
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        # Idle intra-op threads sleep instead of spinning: in a gateway the same cores decode uploads
        # and encode answers between batches, and spinning threads took that time from them (8 clients,
        # 2 cores: 52-58 -> 39-41 ms of CPU per request, and offline batched throughput did not drop;
        # docs/BENCHMARKS.md, Service).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=onnx_providers(device))
        self.input_names = {item.name for item in self.session.get_inputs()}

    def run(self, batch: PreparedBatch, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {
            "rgb": batch.rgb.numpy(),
            "depth": batch.depth.numpy(),
            "has_depth": batch.has_depth.numpy().astype(np.float32),
            "objects": labels.numpy(),
        }
        # A graph exported before object adapters (no `objects` input) still serves.
        feeds = {name: value for name, value in feeds.items() if name in self.input_names}
        errors, probabilities = self.session.run(list(OUTPUTS), feeds)
        return torch.from_numpy(errors), torch.from_numpy(probabilities)


def onnx_model(
    net: IUMADNet, manifest: Manifest, onnx_path: Path, device: str = "cpu", threads: int | None = None
) -> InspectionModel:
    """An `InspectionModel` whose network runs in onnxruntime on `onnx_path`."""
    return InspectionModel(net, manifest, graph=OnnxGraph(onnx_path, device, threads))


def load_onnx_model(directory: Path, device: str = "cpu") -> InspectionModel:
    """A version on disk served by onnxruntime on its own checked `model.onnx`."""
    net, manifest = load_version(directory)
    return onnx_model(net, manifest, verify_file(directory, manifest, ONNX_FILE), device)


def serving_backend(
    directory: Path, manifest: Manifest, backend: str, device: str, backbone_weights: Path | None = None
) -> str:
    """The backend a gateway serves `directory` with: `auto` is onnxruntime on a CPU where the version
    carries its exported graph (measured 3x faster than PyTorch there, docs/BENCHMARKS.md), else torch.
    Backbone weights of one's own need PyTorch: the exported graph holds the export's."""
    if backend not in ("auto", "torch", "onnxruntime"):
        raise ValueError(f"unknown inference backend {backend!r}")
    if backend == "onnxruntime" and backbone_weights is not None:
        raise CheckpointError(
            "IUMAD_BACKBONE_WEIGHTS applies to the PyTorch backend only: the ONNX graph carries the "
            "backbone it was exported with (unset one, or set IUMAD_INFERENCE_BACKEND=torch)"
        )
    if backend != "auto":
        return backend
    if torch.device(device).type != "cpu" or backbone_weights is not None:
        return "torch"
    if ONNX_FILE not in manifest.files_sha256 or not (Path(directory) / ONNX_FILE).is_file():
        log.info("model version %s has no %s: serving it with PyTorch", manifest.version, ONNX_FILE)
        return "torch"
    return "onnxruntime"


def load_serving_model(
    directory: Path, backend: str = "auto", device: str = "cpu", backbone_weights: Path | None = None
) -> InspectionModel:
    """The gateway's loader: PyTorch, or onnxruntime on the version's exported graph (`serving_backend`).

    Gateways never export: a version meant for onnxruntime carries its `model.onnx`, written by the
    worker with the version (and covered by the manifest's sha256).
    """
    chosen = serving_backend(directory, read_manifest(directory), backend, device, backbone_weights)
    if chosen == "onnxruntime":
        return load_onnx_model(directory, device)
    return InspectionModel.load(directory, device, backbone_weights)
