"""The model-version format, in one place: a directory with `model.safetensors` + `manifest.json`.

Writing is atomic (temporary directory beside the target, fsync, rename), so a loader never sees a
partial version; loading never unpickles and checks the format version and the weights' sha256.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.atomic_write import publish_directory
from model.errors import CheckpointError
from model.network.config import ModelConfig
from model.network.iumad import IUMADNet

# The calibration's default: the share of normal parts an object's threshold may reject.
DEFAULT_FALSE_REJECT_RATE = 0.01

FORMAT_VERSION = 2  # 2: object prototypes replace the learned object head
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"


@dataclass
class ObjectRecord:
    """One enrolled object: its label index, modalities, per-modality error statistics, threshold."""

    name: str
    label: int
    modalities: list[str]
    norm_mean: list[float] = field(default_factory=lambda: [0.0, 0.0])  # [rgb, depth]
    norm_std: list[float] = field(default_factory=lambda: [1.0, 1.0])
    # Normal image-score mean and spread of each modality's map alone ([rgb, depth]): the anomaly map
    # is the maximum of the standardised modality maps. None (older versions): their mean.
    score_mean: list[float] | None = None
    score_std: list[float] | None = None
    threshold: float | None = None
    target_false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE
    train_samples: int = 0
    holdout_samples: int = 0
    enrolled_in: str = ""
    calibration: dict[str, Any] = field(default_factory=dict)


@dataclass
class Manifest:
    version: str
    config: ModelConfig
    feature_channels: dict[str, int]
    objects: list[ObjectRecord]
    parent: str | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    files_sha256: dict[str, str] = field(default_factory=dict)  # extra files, e.g. model.onnx
    format_version: int = FORMAT_VERSION

    def object(self, name: str) -> ObjectRecord:
        for record in self.objects:
            if record.name == name:
                return record
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        values = dict(data)
        values["config"] = ModelConfig.from_dict(values["config"])
        values["objects"] = [ObjectRecord(**record) for record in values["objects"]]
        return cls(**values)


def new_version_id() -> str:
    """Sortable by creation time, unique across workers: `v20261128T120000-1a2b3c`."""
    return datetime.now(UTC).strftime("v%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_version(
    net: IUMADNet, manifest: Manifest, directory: Path, extra_files: dict[str, Path] | None = None
) -> Path:
    """Write `directory` atomically; returns it. Refuses to overwrite an existing version."""
    directory = Path(directory)
    if directory.exists():
        raise CheckpointError(f"model version {directory} already exists")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".tmp-{directory.name}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        state = {key: value.detach().contiguous().cpu() for key, value in net.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format_version": str(FORMAT_VERSION)})
        manifest.weights_sha256 = sha256_of(staging / WEIGHTS_FILE)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
            manifest.files_sha256[name] = sha256_of(staging / name)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2))
        publish_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_manifest(directory: Path) -> Manifest:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a model version (no {MANIFEST_FILE})")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(data, dict) or "format_version" not in data:
        raise CheckpointError(f"{path} is not an IB-IUMAD manifest (no format_version)")
    if data["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {data['format_version']!r}; this build reads version {FORMAT_VERSION}"
        )
    try:
        return Manifest.from_dict(data)
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} is malformed: {error}") from error


def verify_file(directory: Path, manifest: Manifest, name: str) -> Path:
    """An extra file of a version (e.g. model.onnx), checked against the manifest's sha256."""
    path = Path(directory) / name
    expected = manifest.files_sha256.get(name)
    if expected is None or not path.is_file():
        raise CheckpointError(f"model version {manifest.version} has no {name}")
    if sha256_of(path) != expected:
        raise CheckpointError(f"{path} is corrupt: its sha256 does not match the manifest")
    return path


def build_net(manifest: Manifest) -> IUMADNet:
    return IUMADNet(
        manifest.config,
        manifest.feature_channels["rgb"],
        manifest.feature_channels["depth"],
        max(1, len(manifest.objects)),
    )


def load_version(directory: Path, verify: bool = True) -> tuple[IUMADNet, Manifest]:
    directory = Path(directory)
    manifest = read_manifest(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} has no {WEIGHTS_FILE}")
    if verify:
        actual = sha256_of(weights)
        if actual != manifest.weights_sha256:
            raise CheckpointError(
                f"{weights} is corrupt: sha256 {actual[:12]}… does not match the manifest's "
                f"{manifest.weights_sha256[:12]}…"
            )
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {weights}: {error}") from error
    net = build_net(manifest)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{weights} does not fit its manifest's config: {error}") from error
    return net.for_inference(), manifest


def clone_net(net: IUMADNet) -> IUMADNet:
    copy = IUMADNet(net.config, net.rgb_mean.numel(), net.depth_mean.numel(), net.num_classes)
    copy.load_state_dict({k: v.clone() for k, v in net.state_dict().items()})
    return copy


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
