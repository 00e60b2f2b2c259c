"""A refinement: one enrolled object learns from the parts it got wrong, and no other object moves.

Operators mark false rejects good and report defects (store/feedback.py). A refinement continues
that object's own adapters from the serving version on its stored normal samples plus half of the
parts marked good (repeated to a quarter of each epoch), and re-calibrates it on its held-out
normals plus the other half (`RefinementRecipe`): the threshold rule is unchanged, the false-reject
target on normals the network never trained on, which now include parts an operator confirmed.
Every shared weight and every other object's adapters are frozen, and their records are copied as
they are, so every other object reconstructs, calibrates and scores bit-identically (docs/MODEL.md,
object adapters).

The confirmed and missed defects never train the network (it learns normality only); they measure
it: the result reports, before and after, the miss rate on them and the false-reject rate on all
the parts marked good (the calibrating half included, so "after" is partly in-sample), each at the
model's own threshold.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from model.checkpoint import Manifest, ObjectRecord, clone_net, new_version_id
from model.data.batches import InspectionInput
from model.data.samples import SampleSource
from model.errors import ConflictError, InputError
from model.inference import InspectionModel
from model.network.iumad import IUMADNet
from model.training.features import FeatureSet, ObjectSamples, step_features
from model.training.loop import fit
from model.training.options import ProgressCallback, TrainingOptions
from model.training.trainer import TrainingResult, calibrated_on, convergence_watch


@dataclass(frozen=True)
class RefinementRecipe:
    """How the parts marked good are used (docs/BENCHMARKS.md, "Refinement", says why these values).

    `calibration_share` of them (every k-th) join the held-out normals that set the threshold and
    tell when training has converged, and are never trained on; the rest train, repeated so that
    they make up `good_share` of every epoch (among some hundred stored normals, ten hard ones
    drawn at their own rate barely move the adapters)."""

    good_share: float = 0.25
    calibration_share: float = 0.5


@dataclass(frozen=True)
class Rates:
    """How a model version does on the operator's corrections, at its threshold for the object."""

    threshold: float
    false_reject_rate: float | None  # of the parts marked good (None: none marked)
    miss_rate: float | None  # of the confirmed and missed defects (None: none reported)
    good_scores: tuple[float, ...]
    defect_scores: tuple[float, ...]


@dataclass
class RefinementResult(TrainingResult):
    before: Rates | None = None
    after: Rates | None = None


def train_only_object_adapters(net: IUMADNet, label: int) -> None:
    """Everything frozen but the adapters of object `label`."""
    net.requires_grad_(False)
    for branch in net.branches.values():
        for adapters in branch.adapters or ():
            for parameter in adapters.objects[label].parameters():
                parameter.requires_grad_(True)


def refine_version(
    parent: InspectionModel,
    name: str,
    normals: ObjectSamples,
    marked_good: Sequence[SampleSource],
    defects: Sequence[SampleSource],
    options: TrainingOptions | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    version: str | None = None,
    recipe: RefinementRecipe = RefinementRecipe(),
) -> RefinementResult:
    """A new version in which object `name` has learned `normals` (its stored samples, with a
    held-out part) plus `marked_good` (as `recipe` says); `defects` only measure it."""
    options = options or TrainingOptions()
    torch.manual_seed(options.seed)
    record = _refinable(parent, name, normals)
    report = progress or (lambda fraction, stage, details: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    good_train, good_calibration = split_marked(marked_good, recipe.calibration_share)
    training_set = ObjectSamples(
        name, [*normals.train, *good_train], [*normals.holdout, *good_calibration],
        record.target_false_reject_rate,
    )  # fmt: skip
    features = step_features([training_set], parent.config, options, report, should_cancel)
    timings["features_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    net = clone_net(parent.net)
    train_only_object_adapters(net, record.label)
    train = with_share(features.train[name], len(good_train), recipe.good_share)
    summary = fit(
        net,
        train,
        torch.full((len(train),), record.label, dtype=torch.long),
        options,
        learning_rate=options.incremental_learning_rate,
        progress=report,
        should_cancel=should_cancel,
        progress_span=(0.25, 0.85),
        watch=convergence_watch(features, {name: record.label}, options),
    )
    timings["training_s"] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    report(0.85, "calibration", {})
    version = version or new_version_id()
    refined = _recalibrated(net, parent, record, features.holdout[name], len(training_set.train), version)
    timings["calibration_s"] = round(time.perf_counter() - started, 2)
    training = {
        "kind": "refinement",
        "refined_object": name,
        "new_objects": [],
        "marked_good": len(marked_good),
        "marked_good_calibrating": len(good_calibration),
        "recipe": asdict(recipe),
        "defects": len(defects),
        "options": asdict(options),
        "timings": timings,
        **summary,
    }
    manifest = _manifest(parent, version, refined, training)

    report(0.9, "measuring", {})
    started = time.perf_counter()
    before = correction_rates(parent, name, marked_good, defects)
    after = correction_rates(InspectionModel(net, manifest), name, marked_good, defects)
    timings["rates_s"] = round(time.perf_counter() - started, 2)
    manifest.metrics["refinement"] = {"before": asdict(before), "after": asdict(after)}
    report(1.0, "trained", {})
    return RefinementResult(net=net, manifest=manifest, before=before, after=after)


def split_marked(
    marked_good: Sequence[SampleSource], calibration_share: float
) -> tuple[list[SampleSource], list[SampleSource]]:
    """(to train, to calibrate): every k-th part calibrates, at least one part trains."""
    if calibration_share <= 0 or len(marked_good) < 2:
        return list(marked_good), []
    every = max(2, round(1 / calibration_share))
    calibrating = [s for i, s in enumerate(marked_good) if i % every == every - 1]
    return [s for i, s in enumerate(marked_good) if i % every != every - 1], calibrating


def with_share(features: FeatureSet, last: int, share: float) -> FeatureSet:
    """`features` whose `last` rows are repeated until they make up about `share` of the set."""
    if last == 0 or share <= 0:
        return features
    others = len(features) - last
    repeats = max(1, round(share * others / ((1 - share) * last)))
    index = torch.cat([torch.arange(others), torch.arange(others, len(features)).repeat(repeats)])
    return FeatureSet(
        features.rgb[index], features.depth[index], features.has_depth[index], features.depth_valid[index]
    )


def _refinable(parent: InspectionModel, name: str, normals: ObjectSamples) -> ObjectRecord:
    """The object's record; raises unless this network and these samples can refine it alone."""
    record = parent.object(name)
    if not parent.net.has_object_adapters:
        raise ConflictError(
            "refining one object needs a network with object adapters (the cpu and full presets): "
            "in this one every object shares all weights, so re-enrol the object instead"
        )
    if not normals.holdout:
        raise InputError(f"object {name!r} has no held-out normals to re-calibrate a refinement on")
    return record


def _recalibrated(
    net: IUMADNet,
    parent: InspectionModel,
    record: ObjectRecord,
    holdout: FeatureSet,
    train_samples: int,
    version: str,
) -> ObjectRecord:
    """The refined object's record: calibrated again on its held-out normals (same target)."""
    result = calibrated_on(
        net,
        parent.config,
        holdout,
        record.label,
        "depth" in record.modalities,
        record.target_false_reject_rate,
    )
    return dataclasses.replace(
        record,
        norm_mean=result.norm_mean,
        norm_std=result.norm_std,
        score_mean=result.score_mean,
        score_std=result.score_std,
        threshold=result.threshold,
        train_samples=train_samples,
        holdout_samples=len(holdout),
        calibration={**result.summary, "on": "holdout", "refined_in": version},
    )


def _manifest(
    parent: InspectionModel, version: str, refined: ObjectRecord, training: dict[str, Any]
) -> Manifest:
    """The parent's manifest with the refined object's record; every other record copied as it is."""
    return Manifest(
        version=version,
        config=parent.config,
        feature_channels=dict(parent.manifest.feature_channels),
        objects=[
            refined if r.name == refined.name else ObjectRecord(**asdict(r)) for r in parent.manifest.objects
        ],
        parent=parent.version,
        training=training,
    )


def correction_rates(
    model: InspectionModel,
    name: str,
    marked_good: Sequence[SampleSource],
    defects: Sequence[SampleSource],
    batch_size: int = 8,
) -> Rates:
    """`model`'s false-reject rate on `marked_good` and miss rate on `defects`, scored as `name`."""
    threshold = model.object(name).threshold
    assert threshold is not None

    def scores(sources: Sequence[SampleSource]) -> tuple[float, ...]:
        values: list[float] = []
        for start in range(0, len(sources), batch_size):
            items = [
                InspectionInput(*source(), object=name) for source in sources[start : start + batch_size]
            ]
            values += [prediction.raw_score for prediction in model.predict(items)]
        return tuple(round(v, 6) for v in values)

    good, bad = scores(marked_good), scores(defects)
    return Rates(
        threshold=float(threshold),
        false_reject_rate=sum(s > threshold for s in good) / len(good) if good else None,
        miss_rate=sum(s <= threshold for s in bad) / len(bad) if bad else None,
        good_scores=good,
        defect_scores=bad,
    )
