"""Base and incremental training steps, from normal samples to a calibrated model version in memory.

The frozen backbone's features are computed once per sample and cached; every epoch then costs only
the small reconstruction network. An incremental step starts from the parent version, grows the
label classifiers (old objects keep their index) and sees only the new objects' samples — no replay
of old images. Old objects are only re-calibrated (normalisation and threshold) on their retained
held-out normals, which training never sees.

This module orders the step; each part has its own: the cached features (features.py), the loop
(loop.py), when to stop (convergence.py), the threshold (calibration.py), the options (options.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from model.checkpoint import Manifest, ObjectRecord, clone_net, new_version_id
from model.data.samples import Sample, SampleSource, sample_source
from model.errors import ConflictError, InputError
from model.inference import InspectionModel
from model.network.anomaly_map import modality_weights
from model.network.config import ModelConfig
from model.network.iumad import IUMADNet
from model.network.presets import PRESETS, SHIPPED_PRESET
from model.training.calibration import ObjectCalibration, calibrate_object
from model.training.convergence import ConvergenceWatch
from model.training.features import FeatureSet, ObjectSamples, StepFeatures, concatenated, step_features
from model.training.loop import KeptRows, fit, train_only_new_objects
from model.training.options import ProgressCallback, TrainingOptions

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    net: IUMADNet
    manifest: Manifest
    holdout_features: dict[str, FeatureSet] = field(default_factory=dict)


def _errors_for(
    net: IUMADNet, features: FeatureSet, label: int, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Error maps of one object's samples, reconstructed as that object (its label's adapters)."""
    errors = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            part = slice(start, start + batch_size)
            has_depth = features.has_depth[part]
            objects = torch.full((has_depth.shape[0],), label, dtype=torch.long)
            error, _ = net.error_maps(
                features.rgb[part], features.depth[part], torch.ones_like(has_depth), has_depth, objects
            )
            errors.append(error)
    has_rgb = torch.ones_like(features.has_depth)
    return torch.cat(errors), modality_weights(has_rgb, features.has_depth, features.depth_valid)


def train_version(
    new_objects: Sequence[ObjectSamples],
    parent: InspectionModel | None = None,
    config: ModelConfig | None = None,
    options: TrainingOptions | None = None,
    retained_holdouts: dict[str, FeatureSet] | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    version: str | None = None,
) -> TrainingResult:
    """One step: a base step when `parent` is None, else an incremental step from `parent`.

    `retained_holdouts` are old objects' held-out normal features, used only to re-calibrate them.
    Steps: features (the frozen backbone, once per sample), the network (new, or the parent's
    grown), the training loop, calibration on held-out normals, the manifest.
    """
    options = options or TrainingOptions()
    torch.manual_seed(options.seed)
    old_records = _check_new_objects(new_objects, parent)
    config = parent.config if parent is not None else (config or PRESETS[SHIPPED_PRESET])
    timings: dict[str, float] = {}
    report = progress or (lambda fraction, stage, details: None)

    started = time.perf_counter()
    features = step_features(new_objects, config, options, report, should_cancel)
    timings["features_s"] = round(time.perf_counter() - started, 2)

    first_label = len(old_records)
    label_of = {item.name: first_label + offset for offset, item in enumerate(new_objects)}
    all_train = concatenated(list(features.train.values()))
    labels = torch.cat(
        [torch.full((len(s),), label_of[n], dtype=torch.long) for n, s in features.train.items()]
    )
    start = _starting_network(parent, config, all_train, len(new_objects), options)
    for name, train_set in features.train.items():
        start.net.set_prototype(label_of[name], train_set.rgb, train_set.depth, train_set.has_depth)

    started = time.perf_counter()
    summary = fit(
        start.net,
        all_train,
        labels,
        options,
        learning_rate=start.learning_rate,
        anchor=start.anchor,
        progress=report,
        should_cancel=should_cancel,
        progress_span=(0.25, 0.9),
        kept_rows=start.kept_rows,
        watch=convergence_watch(features, label_of, options),
    )
    timings["training_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    report(0.9, "calibration", {})
    version = version or new_version_id()
    retained = dict(retained_holdouts or {})
    records = _recalibrated(start.net, config, old_records, retained, version) + [
        _new_record(start.net, config, item, label_of[item.name], features, version) for item in new_objects
    ]
    timings["calibration_s"] = round(time.perf_counter() - started, 2)

    training = {
        "kind": "base" if parent is None else "incremental",
        "new_objects": [item.name for item in new_objects],
        "options": asdict(options),
        "timings": timings,
        **summary,
    }
    manifest = _manifest(version, config, start.net, records, parent, training)
    report(1.0, "trained", {})
    return TrainingResult(net=start.net, manifest=manifest, holdout_features={**retained, **features.holdout})


def _manifest(
    version: str,
    config: ModelConfig,
    net: IUMADNet,
    records: list[ObjectRecord],
    parent: InspectionModel | None,
    training: dict[str, Any],
) -> Manifest:
    return Manifest(
        version=version,
        config=config,
        feature_channels={"rgb": int(net.rgb_mean.numel()), "depth": int(net.depth_mean.numel())},
        objects=records,
        parent=parent.version if parent is not None else None,
        training=training,
    )


def _check_new_objects(
    new_objects: Sequence[ObjectSamples], parent: InspectionModel | None
) -> list[ObjectRecord]:
    """The parent's object records; raises unless the new objects are new, distinct and trainable."""
    if not new_objects:
        raise InputError("a training step needs at least one new object")
    names = [item.name for item in new_objects]
    if len(set(names)) != len(names):
        raise InputError(f"duplicate object names in one step: {names}")
    old_records = list(parent.manifest.objects) if parent is not None else []
    for name in names:
        if any(record.name == name for record in old_records):
            raise ConflictError(f"object {name!r} is already enrolled in {parent.version}")
    for item in new_objects:
        if len(item.train) < 2:
            raise InputError(f"object {item.name!r} needs at least 2 training samples, got {len(item.train)}")
    return old_records


def convergence_watch(
    features: StepFeatures, label_of: dict[str, int], options: TrainingOptions
) -> ConvergenceWatch | None:
    """The new objects' held-out normals, when the step stops on convergence and has any."""
    if not options.stop_when_converged or not features.holdout:
        return None
    held = concatenated(list(features.holdout.values()))
    labels = torch.cat(
        [torch.full((len(s),), label_of[name], dtype=torch.long) for name, s in features.holdout.items()]
    )
    return ConvergenceWatch(
        options.convergence, held.rgb, held.depth, held.has_depth, held.depth_valid, labels
    )


@dataclass
class StartingNetwork:
    """The network a step trains, and how: its learning rate, the anchor an incremental step is
    pulled towards, and the old objects' classifier rows kept fixed (with object adapters)."""

    net: IUMADNet
    learning_rate: float
    anchor: dict[str, torch.Tensor] | None = None
    kept_rows: KeptRows = field(default_factory=list)


def _starting_network(
    parent: InspectionModel | None,
    config: ModelConfig,
    all_train: FeatureSet,
    new_count: int,
    options: TrainingOptions,
) -> StartingNetwork:
    """A new network for a base step (feature statistics from its samples), else the parent's, grown."""
    if parent is None:
        net = IUMADNet(config, all_train.rgb.shape[1], all_train.depth.shape[1], new_count)
        depth_rows = all_train.has_depth
        net.set_feature_statistics(
            all_train.rgb, all_train.depth[depth_rows] if bool(depth_rows.any()) else None
        )
        return StartingNetwork(net, options.learning_rate)
    net = clone_net(parent.net)
    first_label = len(parent.manifest.objects)
    anchor = {k: v.detach().clone() for k, v in net.named_parameters()}
    net.grow(first_label + new_count)
    if net.has_object_adapters:
        return StartingNetwork(
            net, options.incremental_learning_rate, None, train_only_new_objects(net, first_label)
        )
    return StartingNetwork(net, options.incremental_learning_rate, anchor)


def calibrated_on(
    net: IUMADNet, config: ModelConfig, features: FeatureSet, label: int, with_depth: bool, target: float
) -> ObjectCalibration:
    """Object `label`'s calibration (normalisation, threshold) on `features`, reconstructed as it."""
    errors, weights = _errors_for(net, features, label)
    if not with_depth:
        weights[:, 1] = 0
    return calibrate_object(
        errors, weights, config.image_size, config.smoothing_sigma, config.score_pool, target
    )


def _recalibrated(
    net: IUMADNet,
    config: ModelConfig,
    old_records: list[ObjectRecord],
    retained: dict[str, FeatureSet],
    version: str,
) -> list[ObjectRecord]:
    """The old objects' records, re-calibrated where their held-out features were kept.

    With object adapters an old object's path through the network is frozen, so its calibration
    cannot change: its record is kept as it is, bit for bit, rather than recomputed (a recomputation
    is work for nothing, and any difference in how it runs would move the threshold's last bits).
    """
    records = []
    for record in old_records:
        updated = ObjectRecord(**asdict(record))
        if record.name in retained and not net.has_object_adapters:
            result = calibrated_on(
                net,
                config,
                retained[record.name],
                record.label,
                "depth" in record.modalities,
                record.target_false_reject_rate,
            )
            updated.norm_mean, updated.norm_std = result.norm_mean, result.norm_std
            updated.score_mean, updated.score_std = result.score_mean, result.score_std
            updated.threshold = result.threshold
            updated.calibration = {**result.summary, "recalibrated_in": version}
        records.append(updated)
    return records


def _new_record(
    net: IUMADNet,
    config: ModelConfig,
    item: ObjectSamples,
    label: int,
    features: StepFeatures,
    version: str,
) -> ObjectRecord:
    """A new object's record, calibrated on its held-out normals (its training samples without any)."""
    calibration_set = features.holdout.get(item.name, features.train[item.name])
    result = calibrated_on(net, config, calibration_set, label, True, item.target_false_reject_rate)
    return ObjectRecord(
        name=item.name,
        label=label,
        modalities=features.train[item.name].modalities,
        norm_mean=result.norm_mean,
        norm_std=result.norm_std,
        score_mean=result.score_mean,
        score_std=result.score_std,
        threshold=result.threshold,
        target_false_reject_rate=item.target_false_reject_rate,
        train_samples=len(item.train),
        holdout_samples=len(item.holdout),
        enrolled_in=version,
        calibration={**result.summary, "on": "holdout" if item.name in features.holdout else "train"},
    )


def sample_sources(samples: Sequence[Sample]) -> list[SampleSource]:
    """Dataset items as lazy training sources."""
    return [sample_source(sample) for sample in samples]
