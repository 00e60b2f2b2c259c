"""A loaded model version ready to inspect parts: preprocessing, backbone, network, anomaly map.

The gateway, the CLI's `eval`, the benchmark and the forgetting guard all call `InspectionModel`, so a
part is scored the same way everywhere. The frozen backbone is shared by every version in a process
(it never changes), so a hot swap only loads the small network.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch

from model.backbone import FrozenBackbone
from model.checkpoint import Manifest, ObjectRecord, load_version
from model.data.batches import InspectionInput, PreparedBatch, prepare_inputs
from model.errors import InputError, NotFoundError
from model.network.anomaly_map import anomaly_maps
from model.network.config import ModelConfig
from model.network.feature_extractor import MultiScaleFeatures
from model.network.iumad import IUMADNet

_BACKBONES: dict[tuple[str, str | None, str], FrozenBackbone] = {}
_BACKBONES_LOCK = threading.Lock()


def shared_backbone(name: str, weights: Path | None = None, device: str = "cpu") -> FrozenBackbone:
    """One frozen backbone per (name, weights, device) per process: versions share it, and a version
    on another device never moves the one a serving version uses."""
    key = (name, str(weights) if weights else None, str(torch.device(device)))
    with _BACKBONES_LOCK:
        if key not in _BACKBONES:
            _BACKBONES[key] = FrozenBackbone(name, weights).to(device)
        return _BACKBONES[key]


def feature_extractor_for(
    config: ModelConfig, weights: Path | None = None, device: str = "cpu"
) -> MultiScaleFeatures:
    return MultiScaleFeatures(
        shared_backbone(config.backbone, weights, device),
        config.feature_strides,
        config.map_stride,
        config.feature_aggregation,
    )


ObjectSource = Literal["given", "predicted"]  # the client named the object, or the model chose it


@dataclass
class Prediction:
    object: str
    object_source: ObjectSource
    object_confidence: float  # the prototype softmax's probability for `object`
    predicted_object: str
    predicted_confidence: float
    raw_score: float
    anomaly_map: np.ndarray  # float32 (S, S) at network resolution
    modalities: list[str]
    warnings: list[str] = field(default_factory=list)


def _present_modalities(batch: PreparedBatch, records: Sequence[ObjectRecord]) -> torch.Tensor:
    """(B, 2) bool: the modalities each part has and its object was enrolled with (only those count)."""
    present = torch.stack([batch.has_rgb, batch.has_depth], dim=1).clone()
    for index, record in enumerate(records):
        present[index, 0] &= "rgb" in record.modalities
        present[index, 1] &= "depth" in record.modalities
        if not bool(present[index].any()):
            raise InputError(
                f"object {record.name!r} was enrolled with {'+'.join(record.modalities)} "
                f"but the request has no such input"
            )
    return present


class NetworkGraph(Protocol):
    """What runs the network for an `InspectionModel`: prepared images and object labels (-1 =
    predict) in, per-token error maps (B, 2, h, w) and object probabilities (B, K) out, on the CPU."""

    name: str

    def run(self, batch: PreparedBatch, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class TorchGraph:
    """The network in PyTorch: the frozen backbone on both images, then the reconstruction."""

    name = "torch"

    def __init__(
        self, net: IUMADNet, config: ModelConfig, device: str = "cpu", backbone_weights: Path | None = None
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).for_inference()
        self.features = feature_extractor_for(config, backbone_weights, str(self.device))

    @torch.inference_mode()
    def extract(self, batch: PreparedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = self.features(batch.rgb.to(self.device))
        if bool(batch.has_depth.any()):
            depth = self.features(batch.depth.to(self.device))
        else:
            depth = torch.zeros_like(rgb)
        return rgb, depth

    @torch.inference_mode()
    def errors(
        self,
        rgb_features: torch.Tensor,
        depth_features: torch.Tensor,
        has_rgb: torch.Tensor,
        has_depth: torch.Tensor,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.error_maps(
            rgb_features.to(self.device),
            depth_features.to(self.device),
            has_rgb.to(self.device),
            has_depth.to(self.device),
            labels.to(self.device),
        )

    def run(self, batch: PreparedBatch, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb_features, depth_features = self.extract(batch)
        errors, probabilities = self.errors(
            rgb_features, depth_features, batch.has_rgb, batch.has_depth, labels
        )
        return errors.cpu(), probabilities.cpu()


class InspectionModel:
    """One model version in memory. Thread-compatible: the gateway calls it from one inference thread."""

    def __init__(
        self,
        net: IUMADNet,
        manifest: Manifest,
        device: str = "cpu",
        backbone_weights: Path | None = None,
        graph: NetworkGraph | None = None,
    ) -> None:
        """`graph` runs the network (default: `TorchGraph` on `device`, with `backbone_weights`);
        everything that depends on the chosen object is this class's, whatever runs the graph."""
        self.net = net
        self.manifest = manifest
        self.config = manifest.config
        self.graph = (
            graph if graph is not None else TorchGraph(net, manifest.config, device, backbone_weights)
        )
        self.by_name = {record.name: record for record in manifest.objects}
        self.by_label = {record.label: record for record in manifest.objects}

    @property
    def backend(self) -> str:
        """What runs the network ("torch" or "onnxruntime"): shown in /readyz and /metrics."""
        return self.graph.name

    @classmethod
    def load(
        cls, directory: Path, device: str = "cpu", backbone_weights: Path | None = None
    ) -> InspectionModel:
        net, manifest = load_version(directory)
        return cls(net, manifest, device, backbone_weights)

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def objects(self) -> list[ObjectRecord]:
        return self.manifest.objects

    def object(self, name: str) -> ObjectRecord:
        if name not in self.by_name:
            known = ", ".join(sorted(self.by_name)) or "none"
            raise NotFoundError(f"unknown object {name!r}; enrolled objects: {known}")
        return self.by_name[name]

    def labels_for(self, objects: Sequence[str | None]) -> torch.Tensor:
        """(B,) label indices of the named objects; -1 where none is named (the network predicts it)."""
        return torch.tensor(
            [self.object(name).label if name is not None else -1 for name in objects], dtype=torch.long
        )

    def predict_prepared(self, batch: PreparedBatch, objects: Sequence[str | None]) -> list[Prediction]:
        errors, probabilities = self.graph.run(batch, self.labels_for(objects))
        return self.finish(errors, probabilities, batch, objects)

    @torch.inference_mode()
    def finish(
        self,
        errors: torch.Tensor,
        probabilities: torch.Tensor,
        batch: PreparedBatch,
        objects: Sequence[str | None],
    ) -> list[Prediction]:
        """Object choice, per-object normalisation, anomaly map and score (shared by every backend)."""
        records, sources, confidences, predicted = self._choose_objects(probabilities, objects)
        present = _present_modalities(batch, records)
        mean = torch.tensor([record.norm_mean for record in records], dtype=errors.dtype)
        std = torch.tensor([record.norm_std for record in records], dtype=errors.dtype)
        unset = [float("nan")] * 2  # calibrated before per-modality score statistics: averaged maps
        score_mean = torch.tensor([record.score_mean or unset for record in records], dtype=errors.dtype)
        score_std = torch.tensor([record.score_std or unset for record in records], dtype=errors.dtype)
        weights = batch.modality_weights() * present[:, :, None, None].to(errors.dtype)
        maps, scores = anomaly_maps(
            errors,
            weights,
            mean,
            std,
            self.config.image_size,
            self.config.smoothing_sigma,
            self.config.score_pool,
            score_mean,
            score_std,
        )
        results = []
        for index, record in enumerate(records):
            warnings = []
            best_name, best_confidence = predicted[index]
            if sources[index] == "given" and best_name != record.name and best_confidence >= 0.9:
                warnings.append(
                    f"the part looks like {best_name!r} (confidence {best_confidence:.2f}), "
                    f"not the given object {record.name!r}"
                )
            modalities = [
                m for m, used in zip(("rgb", "depth"), present[index].tolist(), strict=True) if used
            ]
            results.append(
                Prediction(
                    object=record.name,
                    object_source=sources[index],
                    object_confidence=confidences[index],
                    predicted_object=best_name,
                    predicted_confidence=best_confidence,
                    raw_score=float(scores[index]),
                    anomaly_map=maps[index].numpy().astype(np.float32),
                    modalities=modalities,
                    warnings=warnings,
                )
            )
        return results

    def _choose_objects(
        self, probabilities: torch.Tensor, objects: Sequence[str | None]
    ) -> tuple[list[ObjectRecord], list[ObjectSource], list[float], list[tuple[str, float]]]:
        """Per part: its object's record (the given one, else the most probable), where that choice
        came from, its probability, and the most probable object with its probability."""
        records, sources, confidences, predicted = [], [], [], []
        for index, name in enumerate(objects):
            label = int(probabilities[index].argmax())
            best = self.by_label[label]
            predicted.append((best.name, float(probabilities[index, label])))
            record = self.object(name) if name is not None else best
            records.append(record)
            sources.append("given" if name is not None else "predicted")
            confidences.append(float(probabilities[index, record.label]))
        return records, sources, confidences, predicted

    def predict(self, items: Sequence[InspectionInput]) -> list[Prediction]:
        batch = prepare_inputs(items, self.config)
        return self.predict_prepared(batch, [item.object for item in items])
