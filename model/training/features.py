"""The frozen backbone's features of a step's samples, computed once per sample and cached: every
training step then costs only the small reconstruction network."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from model.checkpoint import DEFAULT_FALSE_REJECT_RATE
from model.data.batches import InspectionInput, prepare_inputs
from model.data.samples import SampleSource
from model.errors import InputError
from model.inference import feature_extractor_for
from model.network.config import ModelConfig
from model.network.feature_extractor import MultiScaleFeatures
from model.training.options import ProgressCallback, TrainingCancelled, TrainingOptions


@dataclass
class ObjectSamples:
    name: str
    train: Sequence[SampleSource]
    holdout: Sequence[SampleSource] = ()
    target_false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE


@dataclass
class FeatureSet:
    rgb: torch.Tensor  # (N, C, h, w)
    depth: torch.Tensor  # (N, C, h, w), zeros where missing
    has_depth: torch.Tensor  # (N,) bool
    depth_valid: torch.Tensor  # (N, h, w) fraction of measured depth pixels per token

    def __len__(self) -> int:
        return self.rgb.shape[0]

    @property
    def modalities(self) -> list[str]:
        if bool(self.has_depth.all()):
            return ["rgb", "depth"]
        if not bool(self.has_depth.any()):
            return ["rgb"]
        raise InputError("an object's samples must all have depth or all lack it")


def extract_features(
    sources: Sequence[SampleSource],
    extractor: MultiScaleFeatures,
    config: ModelConfig,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> FeatureSet:
    rgb_parts, depth_parts, has_depth_parts, valid_parts = [], [], [], []
    for start in range(0, len(sources), batch_size):
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled("canceled during feature extraction")
        items = []
        for source in sources[start : start + batch_size]:
            rgb, depth = source()
            items.append(InspectionInput(rgb=rgb, depth=depth))
        batch = prepare_inputs(items, config)
        with torch.inference_mode():
            rgb_features = extractor(batch.rgb)
            depth_features = (
                extractor(batch.depth) if bool(batch.has_depth.any()) else torch.zeros_like(rgb_features)
            )
            depth_features = depth_features * batch.has_depth.view(-1, 1, 1, 1)
        rgb_parts.append(rgb_features.clone())
        depth_parts.append(depth_features.clone())
        has_depth_parts.append(batch.has_depth)
        valid_parts.append(batch.depth_valid)
        if on_batch is not None:
            on_batch(len(items))
    if not rgb_parts:
        raise InputError("no samples to extract features from")
    return FeatureSet(
        torch.cat(rgb_parts), torch.cat(depth_parts), torch.cat(has_depth_parts), torch.cat(valid_parts)
    )


@dataclass
class StepFeatures:
    train: dict[str, FeatureSet]  # per new object
    holdout: dict[str, FeatureSet]  # per new object that has held-out samples


def step_features(
    new_objects: Sequence[ObjectSamples],
    config: ModelConfig,
    options: TrainingOptions,
    report: ProgressCallback,
    should_cancel: Callable[[], bool] | None,
) -> StepFeatures:
    """Backbone features of every new sample, once (the backbone is frozen); progress 0-25 %."""
    extractor = feature_extractor_for(config)
    total_samples = sum(len(item.train) + len(item.holdout) for item in new_objects)
    done = 0

    def on_batch(count: int) -> None:
        nonlocal done
        done += count
        report(0.25 * done / max(1, total_samples), "features", {"samples": done, "of": total_samples})

    def extract(sources: Sequence[SampleSource]) -> FeatureSet:
        return extract_features(
            sources, extractor, config, options.feature_batch_size, on_batch, should_cancel
        )

    features = StepFeatures(train={}, holdout={})
    for item in new_objects:
        features.train[item.name] = extract(item.train)
        if item.holdout:
            features.holdout[item.name] = extract(item.holdout)
    return features


def concatenated(sets: list[FeatureSet]) -> FeatureSet:
    return FeatureSet(
        torch.cat([s.rgb for s in sets]),
        torch.cat([s.depth for s in sets]),
        torch.cat([s.has_depth for s in sets]),
        torch.cat([s.depth_valid for s in sets]),
    )
