"""Scoring a model version on labelled test samples: the one path used by `iumad eval`, `iumad bench
--method ib-iumad` and the documentation's numbers.

Pixel metrics are computed at network resolution: maps are produced there, and ground truth is
brought there by `resize_mask` (a cell is anomalous when at least half of it is).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from model.data.batches import InspectionInput
from model.data.samples import Sample, load_sample, pixel_truth
from model.evaluation.metrics import aupro, image_auroc, pixel_auroc
from model.inference import InspectionModel


def predict_samples(
    model: InspectionModel,
    object_name: str | None,
    samples: Sequence[Sample],
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> image scores (N,), maps (N, S, S), ground truth (N, S, S) bool at network resolution S
    (None when a defective sample has no mask: image labels only)."""
    scores, maps = [], []
    for start in range(0, len(samples), batch_size):
        loaded = [load_sample(sample) for sample in samples[start : start + batch_size]]
        predictions = model.predict([InspectionInput(item.rgb, item.depth, object_name) for item in loaded])
        for prediction in predictions:
            scores.append(prediction.raw_score)
            maps.append(prediction.anomaly_map)
        if on_batch is not None:
            on_batch(len(loaded))
    return np.asarray(scores), np.stack(maps), pixel_truth(samples, model.config.image_size)


def metrics_for(
    labels: np.ndarray, scores: np.ndarray, truths: np.ndarray | None, maps: np.ndarray
) -> dict[str, float | None]:
    """I-AUROC, P-AUROC, AUPRO in [0, 1]; the pixel metrics are None without masks (`truths` None)."""
    return {
        "i_auroc": image_auroc(labels, scores),
        "p_auroc": pixel_auroc(truths, maps) if truths is not None else None,
        "aupro": aupro(truths, maps) if truths is not None else None,
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
