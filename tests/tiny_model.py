"""Tiny real models and samples for tests: small images, small widths, a few training steps."""

from __future__ import annotations

import numpy as np

from model.network.config import ModelConfig
from model.training.features import ObjectSamples
from model.training.options import TrainingOptions
from model.training.trainer import TrainingResult, train_version

TINY_CONFIG = ModelConfig(image_size=64, hidden_size=32, num_layers=1, num_heads=4, state_size=4)
TINY_OPTIONS = TrainingOptions(epochs=2, batch_size=4)


def sample_source(seed: int, size: int = 80, depth: bool = True, tint: tuple[int, int, int] = (120, 100, 80)):
    """A deterministic textured part on a plane: (rgb, depth) when called."""

    def load():
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:size, 0:size]
        disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
        rgb = np.full((size, size, 3), 40, np.float32)
        rgb[disc] = tint
        rgb += rng.normal(0, 6, rgb.shape)
        z = np.full((size, size), 0.5, np.float32) - 0.02 * disc + rng.normal(0, 2e-4, (size, size))
        z[rng.random((size, size)) < 0.05] = np.nan
        return np.clip(rgb, 0, 255).astype(np.uint8), (z.astype(np.float32) if depth else None)

    return load


def tiny_objects(names=("alpha", "beta"), count=6, depth=True) -> list[ObjectSamples]:
    tints = [(150, 60, 60), (60, 150, 60), (60, 60, 150), (150, 150, 60)]
    return [
        ObjectSamples(
            name,
            [sample_source(100 * i + k, tint=tints[i % 4], depth=depth) for k in range(count)],
            [sample_source(100 * i + 50 + k, tint=tints[i % 4], depth=depth) for k in range(2)],
        )
        for i, name in enumerate(names)
    ]


def train_tiny(
    names=("alpha", "beta"),
    parent=None,
    config: ModelConfig = TINY_CONFIG,
    options: TrainingOptions = TINY_OPTIONS,
    depth=True,
    **kwargs,
) -> TrainingResult:
    return train_version(
        tiny_objects(names, depth=depth), parent=parent, config=config, options=options, **kwargs
    )


def assert_same_prediction(ours, theirs, tolerance: float = 1e-4) -> None:
    """ONNX parity: map and score agree to `tolerance` of their own scale (float32 sums of ~15-unit terms)."""
    assert ours.object == theirs.object and ours.modalities == theirs.modalities
    assert abs(ours.raw_score - theirs.raw_score) <= tolerance * max(1.0, abs(ours.raw_score))
    scale = max(1.0, float(np.abs(ours.anomaly_map).max()))
    np.testing.assert_allclose(theirs.anomaly_map, ours.anomaly_map, atol=tolerance * scale, rtol=1e-3)
