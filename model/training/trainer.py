"""Base and incremental training steps, from normal samples to a calibrated model version in memory.

The frozen backbone's features are computed once per sample and cached; every epoch then costs only
the small reconstruction network. An incremental step starts from the parent version, grows the
label classifiers (old objects keep their index) and sees only the new objects' samples — no replay
of old images. Old objects are only re-calibrated (normalisation and threshold) on their retained
held-out normals, which training never sees.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from model.checkpoint import Manifest, ObjectRecord, clone_net, new_version_id
from model.data.samples import Sample, SampleSource, sample_source
from model.errors import ConflictError, InputError
from model.inference import InspectionInput, InspectionModel, feature_extractor_for, prepare_inputs
from model.network.anomaly_map import modality_weights
from model.network.config import ModelConfig
from model.network.feature_extractor import MultiScaleFeatures
from model.network.iumad import IUMADNet
from model.network.label_classifier import LabelClassifier
from model.network.presets import ANCHOR_WEIGHT, PRESETS, SHIPPED_PRESET
from model.training.calibration import ObjectCalibration, calibrate_object
from model.training.convergence import ConvergenceRule, ConvergenceWatch
from model.training.losses import iumad_losses

log = logging.getLogger(__name__)

"""Loads one normal sample when called: (rgb uint8 HxWx3, depth float32 HxW with NaN invalid, or None)."""

ProgressCallback = Callable[[float, str, dict], None]


class TrainingCancelled(Exception):
    """Raised between batches when the caller asked to stop."""


@dataclass
class ObjectSamples:
    name: str
    train: Sequence[SampleSource]
    holdout: Sequence[SampleSource] = ()
    target_false_reject_rate: float = 0.01


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


DEFAULT_EPOCHS = 40  # a run without a time budget (e.g. `iumad train` with no --max-minutes)


@dataclass
class TrainingOptions:
    # None: the time budget alone decides (DEFAULT_EPOCHS when there is no budget); a number caps it.
    epochs: int | None = None
    batch_size: int = 16
    # 5e-3, not 1e-3: on the real cable_gland development set a 240-s run of the CPU profile reached
    # I-AUROC 71.8 at 1e-3, 82.8 at 3e-3, 84.3 at 6e-3 and 83.9 at 1e-2 (batch 16; 1e-3 needed about
    # 20 minutes for 85): the learning rate, not the network, held back a CPU enrolment (BENCHMARKS).
    learning_rate: float = 5e-3
    incremental_learning_rate: float = 2.5e-3
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.05
    anchor_weight: float = ANCHOR_WEIGHT  # L2 pull towards the parent's weights (presets.py says why)
    depth_dropout: float = 0.1  # train the missing-depth path on objects that have depth
    max_seconds: float | None = None  # training-loop budget: the cosine schedule runs on elapsed time
    finish_by: float | None = None  # wall-clock deadline (time.time()) of the loop, e.g. a job's
    seed: int = 0
    feature_batch_size: int = 8
    # End the step when the held-out normals' error has stopped falling (an enrolment), not only at
    # the budget; the schedule is then warm-up, constant, decay (model/training/convergence.py).
    stop_when_converged: bool = False
    convergence: ConvergenceRule = field(default_factory=ConvergenceRule)

    def loop_budget_s(self) -> float | None:
        """Seconds the training loop may run from now: the tighter of max_seconds and finish_by."""
        budgets = [b for b in (self.max_seconds,) if b is not None]
        if self.finish_by is not None:
            budgets.append(self.finish_by - time.time())
        return max(1.0, min(budgets)) if budgets else None


@dataclass
class TrainingResult:
    net: IUMADNet
    manifest: Manifest
    holdout_features: dict[str, FeatureSet] = field(default_factory=dict)


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


def _learning_rate_factor(progress: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` of the run, then cosine decay to 0 at progress 1."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


def _anchor_penalty(net: IUMADNet, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    total = torch.zeros(())
    for name, parameter in net.named_parameters():
        reference = anchor.get(name)
        if reference is None:
            continue
        if reference.shape == parameter.shape:
            total = total + (parameter - reference).pow(2).sum()
        elif parameter.dim() >= 1 and reference.shape[1:] == parameter.shape[1:]:  # a grown classifier
            total = total + (parameter[: reference.shape[0]] - reference).pow(2).sum()
    return total


KeptRows = list[tuple[torch.nn.Parameter, torch.Tensor]]
"""Grown parameters whose first rows belong to old objects: (parameter, those rows as they must stay)."""


def train_only_new_objects(net: IUMADNet, first_label: int) -> KeptRows:
    """An incremental step of a network with object adapters trains only what is the new objects':
    their adapters and their rows of the label classifiers. Every shared weight is frozen and every
    old object's row is restored after each step, so old objects reconstruct bit-identically."""
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    for branch in net.branches.values():
        for adapters in branch.adapters or ():
            for parameter in adapters.parameters_of(first_label):
                parameter.requires_grad_(True)
    kept: KeptRows = []
    for module in net.modules():
        if isinstance(module, LabelClassifier):
            for parameter in (module.out.weight, module.out.bias):
                parameter.requires_grad_(True)
                kept.append((parameter, parameter.detach()[:first_label].clone()))
    return kept


@dataclass(frozen=True)
class _Schedule:
    """How long a training loop runs: a step cap (epochs), a time budget, or both."""

    batch_size: int
    steps_per_epoch: int
    max_steps: int | None  # None: the time budget alone decides
    budget_s: float | None

    @classmethod
    def of(cls, count: int, options: TrainingOptions) -> _Schedule:
        batch_size = min(options.batch_size, count)
        steps_per_epoch = max(1, count // batch_size)
        budget_s = options.loop_budget_s()
        epochs = options.epochs if options.epochs is not None else (None if budget_s else DEFAULT_EPOCHS)
        max_steps = max(1, epochs * steps_per_epoch) if epochs is not None else None
        return cls(batch_size, steps_per_epoch, max_steps, budget_s)

    def progress(self, step: int, elapsed_s: float) -> float:
        """The larger of steps done / step cap and time spent / budget, at most 1."""
        by_steps = step / self.max_steps if self.max_steps is not None else 0.0
        by_time = elapsed_s / self.budget_s if self.budget_s is not None else 0.0
        return min(1.0, max(by_steps, by_time))


def fit(
    net: IUMADNet,
    features: FeatureSet,
    labels: torch.Tensor,
    options: TrainingOptions,
    learning_rate: float,
    anchor: dict[str, torch.Tensor] | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: Callable[[], bool] | None = None,
    progress_span: tuple[float, float] = (0.0, 1.0),
    kept_rows: KeptRows = (),
    watch: ConvergenceWatch | None = None,
) -> dict:
    """The training loop on cached features. Returns a summary (steps, seconds, loss curve, why it
    stopped).

    The schedule runs on progress = the larger of steps done / step cap and time spent / budget, so
    a time-budgeted run uses its whole budget with a complete warm-up and cosine decay, whatever a
    step costs on this machine. With a `watch` (the held-out normals), the schedule is warm-up,
    constant, decay, and the loop ends as soon as the object has converged and annealed
    (model/training/convergence.py); the budget still bounds it.
    """
    generator = torch.Generator().manual_seed(options.seed)
    count = len(features)
    schedule = _Schedule.of(count, options)
    batch_size, steps_per_epoch, max_steps = schedule.batch_size, schedule.steps_per_epoch, schedule.max_steps
    optimiser = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad], lr=learning_rate, weight_decay=options.weight_decay
    )
    net.train()
    started = time.perf_counter()
    curve: list[dict] = []
    step = 0
    running = 0.0

    def progress_now() -> float:
        return schedule.progress(step, time.perf_counter() - started)

    stop_reason = None
    while stop_reason is None:
        order = torch.randperm(count, generator=generator)
        for start in range(0, steps_per_epoch * batch_size, batch_size):
            fraction = progress_now()
            stop_reason = _stop_reason(schedule, step, fraction, watch)
            if stop_reason is not None:
                break
            if should_cancel is not None and should_cancel():
                raise TrainingCancelled("canceled during training")
            index = order[start : start + batch_size]
            factor = (
                _learning_rate_factor(fraction, options.warmup_fraction)
                if watch is None
                else watch.learning_rate_factor(step, fraction, options.warmup_fraction)
            )
            for group in optimiser.param_groups:
                group["lr"] = learning_rate * factor
            loss, terms = _training_step(net, features, labels, index, options, generator, optimiser, anchor)
            with torch.no_grad():
                for parameter, rows in kept_rows:
                    parameter[: rows.shape[0]] = rows
            step += 1
            running = 0.9 * running + 0.1 * loss if step > 1 else loss
            if watch is not None and watch.due(step):
                watch.measure(net, step, time.perf_counter() - started)
            if step % steps_per_epoch == 0:
                curve.append(_curve_point(step, time.perf_counter() - started, running, terms))
                if progress is not None:
                    low, high = progress_span
                    progress(
                        low + (high - low) * progress_now(),
                        "training",
                        {"loss": running, "step": step, "steps": max_steps},
                    )
    net.for_inference()
    return {
        "steps": step,
        "seconds": round(time.perf_counter() - started, 2),
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "curve": curve,
        "stop_reason": stop_reason,
        "convergence": watch.summary() if watch is not None else None,
    }


StopReason = Literal["converged", "budget", "steps"]


def _stop_reason(
    schedule: _Schedule, step: int, fraction: float, watch: ConvergenceWatch | None
) -> StopReason | None:
    """Why the loop ends before this step, or None to go on: the object converged (and annealed),
    the time budget is spent, or the step cap is reached."""
    if watch is not None and watch.finished(step):
        return "converged"
    if fraction < 1.0:
        return None
    return "steps" if schedule.max_steps is not None and step >= schedule.max_steps else "budget"


def _curve_point(step: int, seconds: float, running_loss: float, terms: dict[str, torch.Tensor]) -> dict:
    """One point of the manifest's loss curve: at the end of an epoch, with each loss term."""
    return {
        "step": step,
        "seconds": round(seconds, 2),
        "loss": round(running_loss, 5),
        **{k: round(float(v), 5) for k, v in terms.items() if k != "total"},
    }


def _training_step(
    net: IUMADNet,
    features: FeatureSet,
    labels: torch.Tensor,
    index: torch.Tensor,
    options: TrainingOptions,
    generator: torch.Generator,
    optimiser: torch.optim.Optimizer,
    anchor: dict[str, torch.Tensor] | None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """One optimiser step on the batch `index` (depth dropped from some samples so the missing-depth
    path trains); returns the loss and its terms."""
    has_depth = features.has_depth[index].clone()
    if options.depth_dropout > 0:
        drop = torch.rand(len(index), generator=generator) < options.depth_dropout
        has_depth &= ~drop
    outputs = net(
        features.rgb[index],
        features.depth[index],
        torch.ones_like(has_depth),
        has_depth,
        jitter=True,
        objects=labels[index],
    )
    terms = iumad_losses(outputs, labels[index])
    loss = terms["total"]
    if anchor is not None and options.anchor_weight > 0:
        loss = loss + options.anchor_weight * _anchor_penalty(net, anchor)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    optimiser.step()
    # The terms stay tensors: read once an epoch (a float() per term and step would sync a GPU).
    return float(loss.detach()), {k: v.detach() for k, v in terms.items()}


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
    features = _step_features(new_objects, config, options, report, should_cancel)
    timings["features_s"] = round(time.perf_counter() - started, 2)

    first_label = len(old_records)
    label_of = {item.name: first_label + offset for offset, item in enumerate(new_objects)}
    all_train = _concatenated(list(features.train.values()))
    labels = torch.cat(
        [torch.full((len(s),), label_of[n], dtype=torch.long) for n, s in features.train.items()]
    )
    start = _starting_network(parent, config, all_train, len(new_objects), options)
    for name, train_set in features.train.items():
        start.net.set_prototype(label_of[name], train_set.rgb, train_set.depth, train_set.has_depth)

    started = time.perf_counter()
    summary = fit(
        start.net, all_train, labels, options, start.learning_rate, start.anchor, report, should_cancel,
        (0.25, 0.9), start.kept_rows, _convergence_watch(features, label_of, options),
    )  # fmt: skip
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


@dataclass
class StepFeatures:
    train: dict[str, FeatureSet]  # per new object
    holdout: dict[str, FeatureSet]  # per new object that has held-out samples


def _step_features(
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


def _convergence_watch(
    features: StepFeatures, label_of: dict[str, int], options: TrainingOptions
) -> ConvergenceWatch | None:
    """The new objects' held-out normals, when the step stops on convergence and has any."""
    if not options.stop_when_converged or not features.holdout:
        return None
    held = _concatenated(list(features.holdout.values()))
    labels = torch.cat(
        [torch.full((len(s),), label_of[name], dtype=torch.long) for name, s in features.holdout.items()]
    )
    return ConvergenceWatch(
        options.convergence, held.rgb, held.depth, held.has_depth, held.depth_valid, labels
    )


def _concatenated(sets: list[FeatureSet]) -> FeatureSet:
    return FeatureSet(
        torch.cat([s.rgb for s in sets]),
        torch.cat([s.depth for s in sets]),
        torch.cat([s.has_depth for s in sets]),
        torch.cat([s.depth_valid for s in sets]),
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


def _calibrated(
    net: IUMADNet, config: ModelConfig, features: FeatureSet, label: int, with_depth: bool, target: float
) -> ObjectCalibration:
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
            result = _calibrated(
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
    result = _calibrated(net, config, calibration_set, label, True, item.target_false_reject_rate)
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
