"""The forgetting guard: a candidate version must still separate every old object's defects.

Held-out normals alone cannot show forgetting (a model that calls everything normal scores them
perfectly), so each stored normal also gets synthetic defects pasted in: colour blobs in RGB, bumps
and dents in depth. Both the parent and the candidate score the same images; if any old object's
image-level AUROC drops by more than the margin, the candidate is not activated automatically.
The paster is deterministic (seeded by object, sample and variant), so a rerun gives the same verdict.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from model.data.batches import InspectionInput, prepare_inputs
from model.data.samples import SampleSource
from model.evaluation.metrics import image_auroc
from model.inference import InspectionModel, TorchGraph
from model.training.options import TrainingCancelled

DEFECT_KINDS = ("colour", "bump", "dent", "colour_dent")


@dataclass(frozen=True)
class PastedDefect:
    rgb: np.ndarray  # uint8 HxWx3
    depth: np.ndarray | None  # float32 HxW, NaN invalid
    mask: np.ndarray  # bool HxW: where the defect changed the part
    kind: str


def _blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A soft, rotated ellipse (weights 0..1) somewhere in the central part of the image."""
    height, width = shape
    side = min(height, width)
    cy = rng.uniform(0.3, 0.7) * height
    cx = rng.uniform(0.3, 0.7) * width
    a = rng.uniform(0.06, 0.12) * side
    b = a * rng.uniform(0.5, 1.0)
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (x - cx) * np.cos(angle) + (y - cy) * np.sin(angle)
    v = -(x - cx) * np.sin(angle) + (y - cy) * np.cos(angle)
    radius = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return np.clip(1.5 - radius, 0.0, 1.0) ** 2  # flat inside, soft edge out to 1.5 radii


def paste_defect(
    rgb: np.ndarray, depth: np.ndarray | None, kind: str, rng: np.random.Generator
) -> PastedDefect:
    """One synthetic defect of `kind` (see DEFECT_KINDS) in a copy of a normal sample."""
    weights = _blob(rgb.shape[:2], rng)
    mask = weights > 0.05
    out_rgb = rgb.copy()
    out_depth = None if depth is None else depth.copy()
    if kind in ("colour", "colour_dent") or depth is None:
        local = rgb[mask].mean(axis=0) if mask.any() else np.full(3, 128.0)
        colour = np.where(local > 127, rng.uniform(0, 60, 3), rng.uniform(195, 255, 3))  # far from the part
        blended = rgb.astype(np.float32) * (1 - weights[..., None]) + colour * weights[..., None]
        out_rgb = np.clip(blended, 0, 255).astype(np.uint8)
    if depth is not None and kind in ("bump", "dent", "colour_dent"):
        valid = np.isfinite(depth)
        values = depth[valid]
        low, high = np.percentile(values, [5, 95]) if values.size else (0.0, 1.0)
        amplitude = max(0.25 * float(high - low), 0.005 * float(np.median(values)) if values.size else 1e-3)
        sign = -1.0 if kind == "bump" else 1.0  # a bump comes nearer the camera (smaller z)
        out_depth = np.where(valid, depth + sign * amplitude * weights, depth).astype(np.float32)
    return PastedDefect(rgb=out_rgb, depth=out_depth, mask=mask, kind=kind)


@dataclass
class ObjectSeparation:
    object: str
    normals: int
    defects: int
    parent_auroc: float
    candidate_auroc: float
    samples_from: str  # "holdout" | "train"
    # Object adapters leave an old object's path untouched: when the candidate gives its parts the
    # parent's scores bit for bit, a few parts prove it, and the full comparison is not needed.
    identical_scores: bool = False

    @property
    def drop(self) -> float:
        return self.parent_auroc - self.candidate_auroc


@dataclass
class GuardReport:
    margin: float
    objects: list[ObjectSeparation] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failed_objects(self) -> list[str]:
        return [item.object for item in self.objects if item.drop > self.margin]

    @property
    def passed(self) -> bool:
        return not self.failed_objects

    def summary(self) -> str:
        if not self.objects:
            return "forgetting guard: no old objects to check"
        worst = max(self.objects, key=lambda item: item.drop)
        verdict = "passed" if self.passed else f"FAILED for {', '.join(self.failed_objects)}"
        return (
            f"forgetting guard {verdict}: largest AUROC drop {worst.drop:+.3f} on {worst.object!r} "
            f"({worst.parent_auroc:.3f} -> {worst.candidate_auroc:.3f}; margin {self.margin:.3f})"
        )

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "margin": self.margin,
            "failed_objects": self.failed_objects,
            "objects": [{**asdict(item), "drop": round(item.drop, 4)} for item in self.objects],
            "skipped": self.skipped,
            "seconds": round(self.seconds, 2),
            "summary": self.summary(),
        }


def guard_inputs(
    name: str, sources: Sequence[SampleSource], defects_per_sample: int, seed: int
) -> tuple[list[InspectionInput], list[bool]]:
    """Each normal sample plus `defects_per_sample` pasted defects -> inputs and is-defective labels."""
    items: list[InspectionInput] = []
    labels: list[bool] = []
    for index, source in enumerate(sources):
        rgb, depth = source()
        items.append(InspectionInput(rgb=rgb, depth=depth, object=name))
        labels.append(False)
        for variant in range(defects_per_sample):
            rng = np.random.default_rng([seed, zlib.crc32(name.encode()), index, variant])
            kind = DEFECT_KINDS[(index * defects_per_sample + variant) % len(DEFECT_KINDS)]
            defect = paste_defect(rgb, depth, kind, rng)
            items.append(InspectionInput(rgb=defect.rgb, depth=defect.depth, object=name))
            labels.append(True)
    return items, labels


def _scores(
    models: Sequence[InspectionModel],
    items: list[InspectionInput],
    batch_size: int,
    should_cancel: Callable[[], bool] | None,
) -> list[list[float]]:
    """Raw image scores of `items` under each model; backbone features are shared when configs agree."""
    graphs = [model.graph for model in models]
    torch_graphs = [graph for graph in graphs if isinstance(graph, TorchGraph)]
    shared = len(torch_graphs) == len(models) and all(model.config == models[0].config for model in models)
    scores: list[list[float]] = [[] for _ in models]
    for start in range(0, len(items), batch_size):
        if should_cancel is not None and should_cancel():
            raise TrainingCancelled("canceled during the forgetting guard")
        chunk = items[start : start + batch_size]
        objects = [item.object for item in chunk]
        if shared:
            batch = prepare_inputs(chunk, models[0].config)
            rgb_features, depth_features = torch_graphs[0].extract(batch)
            for slot, (model, graph) in enumerate(zip(models, torch_graphs, strict=True)):
                errors, probabilities = graph.errors(
                    rgb_features, depth_features, batch.has_rgb, batch.has_depth, model.labels_for(objects)
                )
                predictions = model.finish(errors.cpu(), probabilities.cpu(), batch, objects)
                scores[slot].extend(prediction.raw_score for prediction in predictions)
        else:
            for slot, model in enumerate(models):
                scores[slot].extend(prediction.raw_score for prediction in model.predict(chunk))
    return scores


def run_forgetting_guard(
    parent: InspectionModel,
    candidate: InspectionModel,
    samples: dict[str, tuple[Sequence[SampleSource], str]],
    margin: float,
    defects_per_sample: int = 2,
    max_samples: int = 32,
    identity_samples: int = 4,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[float, str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> GuardReport:
    """Compare parent and candidate on every old object in `samples` ({name: (sources, "holdout"|"train")}).

    With object adapters in both, `identity_samples` parts (and their pasted defects) are scored
    first: the same scores bit for bit settle the object (its path is frozen); anything else falls
    back to the comparison on up to `max_samples` parts."""
    started = time.perf_counter()
    report = GuardReport(margin=margin)
    names = [name for name in parent.by_name if name in candidate.by_name]
    for name in parent.by_name:
        if name not in candidate.by_name:
            report.skipped[name] = "not in the candidate (replaced)"
    for position, name in enumerate(names):
        if name not in samples or not samples[name][0]:
            report.skipped[name] = "no stored samples (enrolled outside the service)"
            continue
        sources, origin = samples[name]
        first = identity_samples if _adapted(parent, candidate) else 0
        separation = _separation(
            name, list(sources)[:first], origin, parent, candidate, defects_per_sample, seed, batch_size,
            should_cancel,
        ) if first else None  # fmt: skip
        if separation is None or not separation.identical_scores:
            separation = _separation(
                name, list(sources)[:max_samples], origin, parent, candidate, defects_per_sample, seed,
                batch_size, should_cancel,
            )  # fmt: skip
        report.objects.append(separation)
        if progress is not None:
            progress((position + 1) / len(names), name)
    report.seconds = time.perf_counter() - started
    return report


def _adapted(parent: InspectionModel, candidate: InspectionModel) -> bool:
    return parent.net.has_object_adapters and candidate.net.has_object_adapters


def _separation(
    name: str,
    sources: list[SampleSource],
    origin: str,
    parent: InspectionModel,
    candidate: InspectionModel,
    defects_per_sample: int,
    seed: int,
    batch_size: int,
    should_cancel: Callable[[], bool] | None,
) -> ObjectSeparation:
    """How well parent and candidate separate the object's parts from their pasted defects."""
    items, labels = guard_inputs(name, sources, defects_per_sample, seed)
    parent_scores, candidate_scores = _scores([parent, candidate], items, batch_size, should_cancel)
    separations = [
        image_auroc(np.array(labels), np.array(scores)) for scores in (parent_scores, candidate_scores)
    ]
    return ObjectSeparation(
        object=name,
        normals=labels.count(False),
        defects=labels.count(True),
        parent_auroc=round(separations[0], 4),
        candidate_auroc=round(separations[1], 4),
        samples_from=origin,
        identical_scores=parent_scores == candidate_scores,
    )
