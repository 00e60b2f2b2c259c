"""Scoring a model version on labelled test samples: the one path used by `iumad eval`, `iumad bench
--method ib-iumad` and the documentation's numbers.

Pixel metrics are computed at network resolution: maps are produced there, and ground truth is
brought there by `resize_mask` (a cell is anomalous when at least half of it is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from model.data.samples import Sample, load_sample, resize_mask
from model.evaluation.metrics import aupro, image_auroc, pixel_auroc
from model.inference import InspectionInput, InspectionModel


def predict_samples(
    model: InspectionModel,
    object_name: str | None,
    samples: Sequence[Sample],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> image scores (N,), maps (N, S, S), ground truth (N, S, S) bool at network resolution S."""
    size = model.config.image_size
    scores, maps, truths = [], [], []
    for start in range(0, len(samples), batch_size):
        loaded = [load_sample(sample) for sample in samples[start : start + batch_size]]
        predictions = model.predict([InspectionInput(item.rgb, item.depth, object_name) for item in loaded])
        for item, prediction in zip(loaded, predictions, strict=True):
            scores.append(prediction.raw_score)
            maps.append(prediction.anomaly_map)
            gt = item.gt if item.gt is not None else np.zeros(item.rgb.shape[:2], dtype=bool)
            truths.append(resize_mask(gt, size))
        if on_batch is not None:
            on_batch(len(loaded))
    return np.asarray(scores), np.stack(maps), np.stack(truths)


def metrics_for(
    labels: np.ndarray, scores: np.ndarray, truths: np.ndarray, maps: np.ndarray
) -> dict[str, float]:
    """I-AUROC, P-AUROC, AUPRO in [0, 1] (AUPRO needs anomalous pixels; NaN-free by construction)."""
    return {
        "i_auroc": image_auroc(labels, scores),
        "p_auroc": pixel_auroc(truths, maps),
        "aupro": aupro(truths, maps),
    }


def evaluate_object(
    model: InspectionModel,
    object_name: str,
    samples: Sequence[Sample],
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, float]:
    scores, maps, truths = predict_samples(model, object_name, samples, on_batch=on_batch)
    labels = np.array([sample.is_anomalous for sample in samples], dtype=int)
    return metrics_for(labels, scores, truths, maps)
