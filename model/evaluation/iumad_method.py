"""IB-IUMAD as an incremental method for `iumad bench`: one model, grown step by step.

Each step holds out a fraction of every new object's normal training samples for calibration (as
enrolment over HTTP does); the held-out features are retained to re-calibrate old objects in later
steps, never to train on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from model.data.samples import Sample
from model.evaluation.evaluate import predict_samples
from model.inference import InspectionModel
from model.network.config import ModelConfig
from model.network.presets import PRESETS, SHIPPED_PRESET
from model.training.features import FeatureSet, ObjectSamples
from model.training.options import TrainingOptions
from model.training.trainer import sample_sources, train_version


def split_holdout(samples: Sequence[Sample], fraction: float) -> tuple[list[Sample], list[Sample]]:
    """Every k-th sample goes to the holdout (deterministic, spread over the whole sequence)."""
    if fraction <= 0 or len(samples) < 4:
        return list(samples), []
    step = max(2, round(1 / fraction))
    holdout = [s for i, s in enumerate(samples) if i % step == step - 1]
    train = [s for i, s in enumerate(samples) if i % step != step - 1]
    return train, holdout


class IUMADMethod:
    name = "ib-iumad"

    def __init__(
        self,
        image_size: int = 224,
        epochs: int | None = None,
        holdout_fraction: float = 0.1,
        max_minutes: float | None = None,
        base_max_minutes: float | None = None,
        config: ModelConfig | None = None,
        seed: int = 0,
        anchor_weight: float | None = None,
        stop_when_converged: bool = False,
    ) -> None:
        self.config = dataclasses.replace(config or PRESETS[SHIPPED_PRESET], image_size=image_size)
        options = TrainingOptions(seed=seed, stop_when_converged=stop_when_converged)
        if anchor_weight is not None:
            options = dataclasses.replace(options, anchor_weight=anchor_weight)
        if epochs is not None:
            options = dataclasses.replace(options, epochs=epochs)
        if max_minutes is not None:
            options = dataclasses.replace(options, max_seconds=60 * max_minutes)
        self.options = options
        # The first (base) step may learn many objects at once and get a budget of its own.
        self.base_options = (
            dataclasses.replace(options, max_seconds=60 * base_max_minutes)
            if base_max_minutes is not None
            else options
        )
        self.holdout_fraction = holdout_fraction
        self.model: InspectionModel | None = None
        self.holdouts: dict[str, FeatureSet] = {}
        self.history: list[dict] = []

    def learn(self, objects: list[str], train: dict[str, list[Sample]]) -> None:
        new_objects = []
        for name in objects:
            fit_on, holdout = split_holdout(train[name], self.holdout_fraction)
            new_objects.append(ObjectSamples(name, sample_sources(fit_on), sample_sources(holdout)))
        result = train_version(
            new_objects,
            parent=self.model,
            config=self.config,
            options=self.options if self.model is not None else self.base_options,
            retained_holdouts=self.holdouts,
        )
        self.model = InspectionModel(result.net, result.manifest)
        self.holdouts = result.holdout_features
        self.history.append(
            {
                "objects": objects,
                **result.manifest.training["timings"],
                "steps": result.manifest.training["steps"],
                "stop_reason": result.manifest.training["stop_reason"],
            }
        )

    def predict(self, object_name: str, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise RuntimeError("learn() must run before predict()")
        scores, maps, _ = predict_samples(self.model, object_name, samples)
        return scores, maps
