"""The enrolment job: an rq job function that runs in the worker's forked work horse.

One job = one step of the model lineage: wait for the lineage lock (so steps apply in order even with
several workers), start from the then-active version, train the new object (a base step when
nothing is active; a rebuild from stored samples when an object is replaced), check for forgetting,
write the version atomically and activate it with a sequence check. Progress goes to the job's
record for `GET /jobs/{id}` and to the log. Cancellation is cooperative (a flag checked between
batches); the cancel route kills the work horse if it does not stop in time. If the horse dies, the
active pointer is untouched and no version directory appears (versions are written by rename).
"""

from __future__ import annotations

import contextlib
import logging
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError as RedisClientError

from core.lifetime import die_with_parent
from core.settings import Settings, get_settings
from model.errors import ConflictError, InputError, IumadError
from store.feedback import FeedbackStore, correction_source
from store.job_spec import EnrolmentSpec, RefinementSpec
from store.job_store import JobStore
from store.lineage_lock import LINEAGE_LOCK_TTL_S, LineageLock, lineage_lock_key
from store.registry import ActiveVersion, ModelRegistry, StaleActivationError
from store.samples import StoredEnrolment, discard_enrolment, load_enrolment, sample_source

if TYPE_CHECKING:
    from model.checkpoint import Manifest
    from model.inference import InspectionModel
    from model.network.config import ModelConfig
    from model.training.features import FeatureSet, ObjectSamples
    from model.training.options import TrainingOptions
    from model.training.trainer import TrainingResult
    from workers.forgetting_guard import GuardReport

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 2.0
# What the job keeps, after its training loop, for calibration, the forgetting guard, the ONNX export
# and saving: a fixed part plus a share of the job's budget (measured: about 10-15 s for 250 pairs on
# 2 cores; docs/BENCHMARKS.md, "Enrolment end to end").
AFTER_TRAINING_RESERVE_S = 20.0
AFTER_TRAINING_RESERVE_SHARE = 0.05


def enrolment_training_options(settings: Settings, started: float, deadline: float) -> TrainingOptions:
    """The training options of a job: its loop ends in time for what follows it, before `deadline`
    (wall clock); the settings' overrides on top."""
    from model.training.options import TrainingOptions

    reserve = AFTER_TRAINING_RESERVE_S + AFTER_TRAINING_RESERVE_SHARE * (deadline - started)
    options = TrainingOptions(
        finish_by=deadline - reserve, seed=0, stop_when_converged=settings.enroll_stop_when_converged
    )
    if settings.train_epochs is not None:
        options.epochs = settings.train_epochs
    if settings.anchor_weight is not None:
        options.anchor_weight = settings.anchor_weight
    return options


class JobCancelled(Exception):
    pass


@dataclass
class StepPlan:
    """What one lineage step does, decided before any training."""

    active: ActiveVersion | None  # the registry's pointer when the step started (for the sequence check)
    parent: InspectionModel | None  # the active version the step starts from
    train_parent: (
        InspectionModel | None
    )  # the parent an incremental step extends; None for a base step or a rebuild
    config: ModelConfig  # the new version's network
    objects: list[ObjectSamples]  # what this step learns
    old_enrolments: dict[str, StoredEnrolment]  # the other objects' stored samples
    lineage: dict[str, str]  # object -> "<object>/<enrolment id>" of every object in the new version
    replacing: bool  # a rebuild of an enrolled object (replace=true)


class EnrolmentRun:
    """Everything one job needs, so the steps below stay short and readable."""

    def __init__(
        self, settings: Settings, redis: Redis, job_id: str, spec: EnrolmentSpec | RefinementSpec
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.job_id = job_id
        self.spec = spec
        self.object = spec.object
        self.store = JobStore.for_settings(redis, settings)
        self.registry = ModelRegistry(redis, settings.models_dir, settings.redis_key_prefix)
        self.lock = LineageLock(
            redis, lineage_lock_key(settings.redis_key_prefix), job_id, LINEAGE_LOCK_TTL_S
        )
        self._holds_lock = False
        self.started = time.time()
        self.deadline = self.started + float(spec.max_minutes or settings.enroll_max_minutes) * 60
        self.timings: dict[str, float] = {}
        self._stage = ""
        self._last_log = 0.0
        self._last_cancel_check = 0.0
        self._cancel = False
        self._stop_heartbeat = threading.Event()

    # ---------------------------------------------------------------------- progress, cancel

    def report(self, fraction: float, stage: str, message: str = "") -> None:
        fraction = min(1.0, max(0.0, fraction))
        now = time.time()
        if stage != self._stage or now - self._last_log > 2.0:
            log.info("job %s (%s): %s %3.0f%% %s", self.job_id, self.object, stage, 100 * fraction, message)
            self._last_log = now
        self._stage = stage
        try:
            self.store.update(self.job_id, progress=round(fraction, 4), stage=stage, message=message or stage)
        except RedisClientError as error:  # progress is best effort; the job goes on without Redis
            log.warning("job %s: cannot record progress (%s)", self.job_id, error)

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._last_cancel_check > 0.5:
            self._last_cancel_check = now
            with contextlib.suppress(RedisClientError):  # Redis away: keep training, ask again later
                self._cancel = self.store.cancel_requested(self.job_id)
        return self._cancel

    def _heartbeat(self) -> None:
        while not self._stop_heartbeat.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.store.beat(self.job_id)
                if self._holds_lock:
                    self.lock.refresh()
            except RedisClientError as error:
                log.warning("job %s: heartbeat failed (%s)", self.job_id, error)

    # ---------------------------------------------------------------------------- the steps

    def execute(self) -> dict[str, Any]:
        self.store.update(
            self.job_id,
            status="running",
            started_at=self.started,
            progress=0.0,
            stage="waiting",
            message="waiting for earlier jobs on the model lineage",
        )
        heartbeat = threading.Thread(target=self._heartbeat, name="job-heartbeat", daemon=True)
        heartbeat.start()
        try:
            self._acquire_lineage()
            try:
                return self._run_step()
            finally:
                self._release_lineage()
        except JobCancelled as error:
            return self._finish("canceled", f"canceled {error}; the active model is unchanged")
        except IumadError as error:
            return self._finish("failed", str(error))
        except Exception as error:
            log.exception("job %s failed", self.job_id)
            self._finish("failed", f"internal error: {type(error).__name__}: {error}")
            raise
        finally:
            self._stop_heartbeat.set()

    def _acquire_lineage(self) -> None:
        waited = time.perf_counter()
        while not self.lock.try_acquire():
            holder = self.lock.holder()
            if holder is not None and holder != self.job_id:
                record = self.store.get(holder)  # reading reconciles: a silent holder is marked failed
                if record is None or record.finished:
                    log.warning(
                        "job %s: taking over the lineage lock of finished job %s", self.job_id, holder
                    )
                    self.lock.break_if_held_by(holder)
                    continue
            if self.should_cancel():
                raise JobCancelled("while waiting for earlier jobs")
            time.sleep(0.5)
        self._holds_lock = True
        self.timings["wait_s"] = round(time.perf_counter() - waited, 2)

    def _release_lineage(self) -> None:
        self._holds_lock = False
        try:
            self.lock.release()
        except RedisClientError as error:
            log.warning(
                "job %s: cannot release the lineage lock (%s); it expires by itself", self.job_id, error
            )

    def _finish(self, status: str, message: str, **fields: Any) -> dict[str, Any]:
        self.timings["total_s"] = round(time.time() - self.started, 2)
        # The peak memory of the process that ran the job (rq's work horse): the enrolment RAM target.
        self.timings["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        log.info("job %s (%s): %s: %s", self.job_id, self.object, status, message)
        if status == "succeeded":
            fields["progress"] = 1.0
        # No version uses a canceled job's samples: free the disk before the final state is written,
        # so that a client who sees the state sees the cleanup done. A failed job's samples stay for a
        # retry (POST /jobs/{id}/retry); the worker removes them after IUMAD_FAILED_SAMPLES_KEEP_HOURS.
        if status == "canceled":
            self._discard_unused_inputs()
        self.store.finish(self.job_id, status, message, stage=status, timings=self.timings, **fields)
        return {"status": status, "message": message, **{k: v for k, v in fields.items() if k == "version"}}

    def _discard_unused_inputs(self) -> None:
        """A canceled enrolment's uploaded samples: no version uses them."""
        discard_enrolment(self.settings.samples_dir, self.spec.object, self.spec.enrolment_id)

    def _activation_reason(self) -> str:
        return f"enrolled {self.object} (job {self.job_id})"

    def _activated(self) -> None:
        """After the activation, before the job is reported succeeded (nothing to do here)."""

    def _success_message(self, version: str) -> str:
        return f"{self.object!r} enrolled; version {version} is active"

    def _checkpoint(self, stage: str) -> None:
        if self.should_cancel():
            raise JobCancelled(f"before {stage}")

    def _run_step(self) -> dict[str, Any]:
        """One lineage step: plan, train, check for forgetting, save, then activate (or ask for review)."""
        from model.checkpoint import new_version_id
        from model.inference import InspectionModel
        from model.training.options import TrainingCancelled

        self._limit_threads()
        plan = self._plan()
        self._checkpoint("training")
        version = new_version_id()
        try:
            result = self._train(plan, version)
            self._checkpoint("the forgetting guard")
            candidate = InspectionModel(result.net, result.manifest)
            guard = self._guard(plan, candidate)
        except TrainingCancelled as error:
            raise JobCancelled(str(error).removeprefix("canceled ")) from error
        self._checkpoint("saving")
        manifest = self._save(plan, result, candidate, guard, version)
        return self._conclude(plan, manifest, guard, version)

    def _limit_threads(self) -> None:
        import torch

        if self.settings.torch_threads:
            torch.set_num_threads(self.settings.torch_threads)

    def _plan(self) -> StepPlan:
        """Load the active version and the stored samples; decide what this step trains."""
        from model.inference import InspectionModel

        started = time.perf_counter()
        self.report(0.01, "loading", "loading the active version and the stored samples")
        active = self.registry.active()
        parent = InspectionModel.load(self.registry.version_dir(active.version)) if active else None
        enrolment = load_enrolment(self.settings.samples_dir / self.spec.enrolment)
        lineage = dict(parent.manifest.training.get("samples", {})) if parent is not None else {}
        replacing = parent is not None and self.object in parent.by_name
        if replacing and not self.spec.replace:
            raise ConflictError(
                f"object {self.object!r} is already enrolled in {parent.version}; "
                "enrol again with replace=true to retrain it"
            )
        lineage[self.object] = self.spec.enrolment
        new = _object_samples(enrolment, self.spec.target_false_reject_rate)
        old_enrolments = self._old_enrolments(parent, lineage)
        if replacing:  # a rebuild: one base step over every object's stored samples
            assert parent is not None
            objects = self._rebuild_objects(parent, old_enrolments) + [new]
            train_parent, config = None, parent.config
        else:
            objects, train_parent = [new], parent
            config = parent.config if parent is not None else self._new_config()
        self.timings["load_s"] = round(time.perf_counter() - started, 2)
        return StepPlan(active, parent, train_parent, config, objects, old_enrolments, lineage, replacing)

    def _rebuild_objects(
        self, parent: InspectionModel, old_enrolments: dict[str, StoredEnrolment]
    ) -> list[ObjectSamples]:
        """Every other object of `parent`, from its stored samples (a rebuild needs them all)."""
        missing = [name for name in parent.by_name if name != self.object and name not in old_enrolments]
        if missing:
            raise InputError(
                f"cannot replace {self.object!r}: objects {missing} have no stored samples "
                "to rebuild the model from"
            )
        return [
            _object_samples(old_enrolments[name], parent.object(name).target_false_reject_rate)
            for name in parent.by_name
            if name != self.object
        ]

    def _new_config(self) -> ModelConfig:
        """The network of a first enrolment: the settings' preset with its overrides."""
        from model.network.presets import preset_config

        return preset_config(self.settings.network_preset, **self.settings.network_config)

    def _retained_features(self, plan: StepPlan) -> dict[str, FeatureSet]:
        """Backbone features of the old objects' held-out samples, which an incremental step without
        object adapters re-calibrates them on. With adapters their records are kept as they are
        (their path is frozen), so nothing is extracted."""
        from model.inference import feature_extractor_for
        from model.training.features import extract_features

        if plan.train_parent is None or plan.train_parent.net.has_object_adapters:
            return {}
        extractor = feature_extractor_for(plan.config)
        return {
            name: extract_features(
                [sample_source(p) for p in stored.holdout],
                extractor,
                plan.config,
                should_cancel=self.should_cancel,
            )
            for name, stored in plan.old_enrolments.items()
            if stored.holdout and name in plan.train_parent.by_name
        }

    def _train(self, plan: StepPlan, version: str) -> TrainingResult:
        from model.training.trainer import train_version

        result = train_version(
            plan.objects,
            parent=plan.train_parent,
            config=plan.config,
            options=enrolment_training_options(self.settings, self.started, self.deadline),
            retained_holdouts=self._retained_features(plan),
            progress=lambda fraction, stage, details: self.report(
                0.05 + 0.75 * fraction, stage, _describe(stage, details)
            ),
            should_cancel=self.should_cancel,
            version=version,
        )
        self.timings.update(result.manifest.training.get("timings", {}))
        return result

    def _guard(self, plan: StepPlan, candidate: InspectionModel) -> GuardReport | None:
        """The forgetting guard against the parent; None for a first enrolment."""
        from workers.forgetting_guard import run_forgetting_guard

        if plan.parent is None:
            return None
        started = time.perf_counter()
        guard = run_forgetting_guard(
            plan.parent,
            candidate,
            {name: _guard_sources(stored) for name, stored in plan.old_enrolments.items()},
            self.settings.forgetting_margin,
            progress=lambda fraction, name: self.report(
                0.8 + 0.15 * fraction, "forgetting_guard", f"checked {name}"
            ),
            should_cancel=self.should_cancel,
        )
        self.timings["guard_s"] = round(time.perf_counter() - started, 2)
        log.info("job %s: %s", self.job_id, guard.summary())
        return guard

    def _save(
        self,
        plan: StepPlan,
        result: TrainingResult,
        candidate: InspectionModel,
        guard: GuardReport | None,
        version: str,
    ) -> Manifest:
        """Write the version (and its ONNX graph unless gateways serve PyTorch) atomically."""
        from model.checkpoint import save_version

        self.report(0.96, "saving", f"writing version {version}")
        started = time.perf_counter()
        manifest = result.manifest
        manifest.training["samples"] = plan.lineage
        manifest.training["job_id"] = self.job_id
        if plan.replacing:
            manifest.training["kind"] = "rebuild"
            manifest.parent = plan.parent.version if plan.parent is not None else None
        if guard is not None:
            manifest.metrics["forgetting_guard"] = guard.to_dict()
        with tempfile.TemporaryDirectory() as scratch:
            extra_files = {}
            if self.settings.inference_backend != "torch":  # gateways never export on the hot path
                from model.checkpoint import ONNX_FILE
                from model.export import export_onnx

                self.report(0.96, "saving", f"exporting version {version} to ONNX")
                exporting = time.perf_counter()
                extra_files[ONNX_FILE] = export_onnx(candidate, Path(scratch) / ONNX_FILE)
                self.timings["export_s"] = round(time.perf_counter() - exporting, 2)
            save_version(result.net, manifest, self.settings.models_dir / version, extra_files=extra_files)
        self.timings["save_s"] = round(time.perf_counter() - started - self.timings.get("export_s", 0.0), 2)
        return manifest

    def _conclude(
        self, plan: StepPlan, manifest: Manifest, guard: GuardReport | None, version: str
    ) -> dict[str, Any]:
        """Activate the saved version, or leave it for review: a failed guard, a job that ended while
        it ran, or an active model that changed meanwhile."""
        common = {
            "version": version,
            "parent": plan.parent.version if plan.parent else None,
            "metrics": _job_metrics(manifest, self.object),
            "guard": guard.to_dict() if guard is not None else {"passed": True, "summary": "first enrolment"},
        }
        if guard is not None and not guard.passed:
            return self._finish(
                "needs_review",
                f"{guard.summary()}; candidate {version} saved but not "
                f"activated: review it, then POST /models/{version}/activate to accept it",
                **common,
            )
        record = self.store.get(self.job_id, reconcile=False)
        if (
            record is None or record.finished
        ):  # e.g. marked failed while Redis was away: do not surprise anyone
            log.warning(
                "job %s ended (%s) while it ran; version %s saved but not activated",
                self.job_id,
                record.status if record else "record lost",
                version,
            )
            return {"status": record.status if record else "unknown", "version": version}
        self.report(0.98, "activating", f"activating {version}")
        started = time.perf_counter()
        try:
            self.registry.activate(
                version,
                expected_sequence=plan.active.sequence if plan.active else 0,
                reason=self._activation_reason(),
                job_id=self.job_id,
            )
        except StaleActivationError:
            now_active = self.registry.active()
            return self._finish(
                "needs_review",
                (
                    f"the active model changed while this job ran (now {now_active.version if now_active else 'none'}); "
                    f"candidate {version} saved but not activated: POST /models/{version}/activate to use it"
                ),
                **common,
            )
        self.timings["activate_s"] = round(time.perf_counter() - started, 2)
        self._activated()
        return self._finish("succeeded", self._success_message(version), **common)

    def _old_enrolments(self, parent: Any, lineage: dict[str, str]) -> dict[str, StoredEnrolment]:
        if parent is None:
            return {}
        stored = {}
        for name in parent.by_name:
            if name == self.object or name not in lineage:
                continue
            try:
                stored[name] = load_enrolment(self.settings.samples_dir / lineage[name])
            except InputError as error:
                log.warning("job %s: stored samples of %r unavailable (%s)", self.job_id, name, error)
        return stored


class RefinementRun(EnrolmentRun):
    """A refinement job: the same lineage step (lock, guard, save, sequence-checked activation) that
    trains one enrolled object on its stored normals plus its operators' corrections
    (model/training/refinement.py). Used corrections leave the feedback store once the refined
    version is active; if it is not (needs review, canceled, failed) they stay pending."""

    spec: RefinementSpec

    def __init__(self, settings: Settings, redis: Redis, job_id: str, spec: RefinementSpec) -> None:
        super().__init__(settings, redis, job_id, spec)
        self.feedback = FeedbackStore(settings.feedback_dir, settings.feedback_max_mb * 1024 * 1024)
        self.marked_good: list[Callable] = []
        self.defects: list[Callable] = []
        self.used: list[str] = []

    def _plan(self) -> StepPlan:
        started = time.perf_counter()
        self.report(0.01, "loading", "loading the active version, the stored samples and the corrections")
        from model.inference import InspectionModel

        active = self.registry.active()
        if active is None:
            raise ConflictError("nothing is enrolled: there is no object to refine")
        parent = InspectionModel.load(self.registry.version_dir(active.version))
        record = parent.object(self.object)
        lineage = dict(parent.manifest.training.get("samples", {}))
        if self.object not in lineage:
            raise InputError(f"object {self.object!r} has no stored samples in {parent.version}'s lineage")
        stored = load_enrolment(self.settings.samples_dir / lineage[self.object])
        wanted = set(self.spec.corrections)
        corrections = [c for c in self.feedback.pending(self.object) if c.request_id in wanted]
        if not corrections:
            raise ConflictError(f"the corrections of {self.object!r} this job was queued for were discarded")
        self.marked_good = [correction_source(self.feedback, c) for c in corrections if c.verdict == "good"]
        self.defects = [correction_source(self.feedback, c) for c in corrections if c.verdict == "defective"]
        self.used = [c.request_id for c in corrections]
        self.timings["load_s"] = round(time.perf_counter() - started, 2)
        normals = _object_samples(stored, record.target_false_reject_rate)
        old = self._old_enrolments(parent, lineage)
        return StepPlan(active, parent, parent, parent.config, [normals], old, lineage, False)

    def _train(self, plan: StepPlan, version: str) -> TrainingResult:
        from model.training.refinement import refine_version

        assert plan.parent is not None
        result = refine_version(
            plan.parent,
            self.object,
            plan.objects[0],
            self.marked_good,
            self.defects,
            options=enrolment_training_options(self.settings, self.started, self.deadline),
            progress=lambda fraction, stage, details: self.report(
                0.05 + 0.75 * fraction, stage, _describe(stage, details)
            ),
            should_cancel=self.should_cancel,
            version=version,
        )
        result.manifest.training["corrections"] = self.used
        self.timings.update(result.manifest.training.get("timings", {}))
        return result

    def _activated(self) -> None:
        """The refined version is active: its corrections are used (a later one waits for the next)."""
        for request_id in self.used:
            self.feedback.discard(self.object, request_id)

    def _discard_unused_inputs(self) -> None:
        """Nothing: a refinement's inputs are the object's stored samples and pending corrections."""

    def _activation_reason(self) -> str:
        return f"refined {self.object} with {len(self.used)} corrections (job {self.job_id})"

    def _success_message(self, version: str) -> str:
        return f"{self.object!r} refined with {len(self.used)} corrections; version {version} is active"


def _object_samples(stored: StoredEnrolment, target_frr: float) -> ObjectSamples:
    """A stored enrolment as the trainer takes it (files are read only when needed)."""
    from model.training.features import ObjectSamples

    return ObjectSamples(
        stored.object,
        [sample_source(p) for p in stored.train],
        [sample_source(p) for p in stored.holdout],
        target_frr,
    )


def _guard_sources(stored: StoredEnrolment) -> tuple[list[Callable], str]:
    if stored.holdout:
        return [sample_source(pair) for pair in stored.holdout], "holdout"
    return [sample_source(pair) for pair in stored.train], "train"


def _describe(stage: str, details: dict[str, Any]) -> str:
    if stage == "features" and details:
        return f"backbone features {details.get('samples')}/{details.get('of')}"
    if stage == "training" and details:
        of = f"/{details['steps']}" if details.get("steps") else ""
        return f"step {details.get('step')}{of}, loss {details.get('loss', 0.0):.4f}"
    return stage


def _job_metrics(manifest: Any, object_name: str) -> dict[str, Any]:
    record = manifest.object(object_name)
    curve = manifest.training.get("curve") or []
    return {
        "object": asdict(record),
        "objects": [r.name for r in manifest.objects],
        "training_steps": manifest.training.get("steps"),
        "stop_reason": manifest.training.get("stop_reason"),
        "converged_at_step": (manifest.training.get("convergence") or {}).get("converged_at_step"),
        "final_loss": curve[-1]["loss"] if curve else None,
    } | ({"refinement": manifest.metrics["refinement"]} if "refinement" in manifest.metrics else {})


def enroll_object(spec: dict[str, Any]) -> dict[str, Any]:
    """rq entry point: `spec` is an `EnrolmentSpec` as JSON (`store.queue.submit_enrolment` queues it)."""
    from rq import get_current_job

    die_with_parent()  # the work horse goes when its worker goes
    job = get_current_job()
    if job is None:
        raise RuntimeError("enroll_object must run inside an rq worker")
    return EnrolmentRun(get_settings(), job.connection, job.id, EnrolmentSpec.from_dict(spec)).execute()


def refine_object(spec: dict[str, Any]) -> dict[str, Any]:
    """rq entry point of a refinement: `spec` is a `RefinementSpec` as JSON (`store.queue.submit_refinement`)."""
    from rq import get_current_job

    die_with_parent()
    job = get_current_job()
    if job is None:
        raise RuntimeError("refine_object must run inside an rq worker")
    return RefinementRun(get_settings(), job.connection, job.id, RefinementSpec.from_dict(spec)).execute()
