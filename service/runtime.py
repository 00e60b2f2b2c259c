"""The serving model and the one thread that runs it, fed by a bounded micro-batching queue.

Each request is admitted (`admit()`) before its body is read: when the queued and admitted requests
already fill `max_queue`, it is refused at once (503 + Retry-After) without reading or decoding the
upload, instead of growing latency without bound. It is decoded and preprocessed (`prepare_inputs`,
numpy) in the gateway's decode pool, then puts one job on the queue (its admission passes to the
queue) and awaits a future. The inference thread takes the first waiting job and, while other
admitted requests are still on their way, waits at most `max_batch_wait_ms` for more (up to
`max_batch_size`); alone, it runs at once. It stacks their tensors and makes one model call. The
event loop never runs model code.

Hot swap: the serving model is one reference, read once at the start of each batch. `swap()` replaces
it between batches, so a batch in flight finishes on the model it started with, and every result
carries the model that computed it. `load_and_swap()` loads and warms a version beside the serving
one and swaps only if that worked; on failure the old model keeps serving and the error is kept for
`/readyz` and the `iumad_model_load_failing` metric.

Thread safety: `submit`, `infer`, `swap`, `load_and_swap`, `load_and_swap_in_background`, `status` and
`begin_drain` may be called from any thread (the event loop, a Redis event follower, tests). Loads are
serialised, so two concurrent `load_and_swap` calls end with the one that finished last serving.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.settings import Settings
from model.data.batches import InspectionInput, PreparedBatch, prepare_inputs
from model.errors import CheckpointError, IumadError
from model.export import load_serving_model
from model.inference import InspectionModel, Prediction
from service.errors import NothingEnrolledError, NotReadyError, QueueFullError
from service.metrics import (
    ACTIVE_MODEL,
    BATCH_SIZE,
    MODEL_LOAD_FAILING,
    MODEL_LOADS,
    MODEL_SWAPS,
    QUEUE_DEPTH,
    QUEUE_REJECTIONS,
)

log = logging.getLogger(__name__)


class RuntimeState(StrEnum):
    EMPTY = "empty"  # no model and none being loaded: nothing enrolled yet
    LOADING = "loading"  # the first model is being loaded and warmed
    READY = "ready"  # a warmed model serves
    FAILED = "failed"  # no model serves because the last load failed
    DRAINING = "draining"  # shutting down: finishing queued work, refusing new work


@dataclass(frozen=True)
class InferenceResult:
    prediction: Prediction
    model: InspectionModel  # the model that computed it (after a swap, maybe no longer the serving one)
    queue_s: float  # from enqueue to the start of its batch
    infer_s: float  # the batch's model call
    batch_size: int

    @property
    def model_version(self) -> str:
        return self.model.version


@dataclass(frozen=True)
class LoadFailure:
    version_dir: str
    message: str
    at: str  # ISO 8601, UTC


@dataclass(frozen=True)
class RuntimeStatus:
    """What `/readyz` and the version follower read of the runtime, at one moment."""

    state: RuntimeState
    model_version: str | None
    device: str
    backend: str | None  # "torch" | "onnxruntime"; None while nothing serves
    loading: bool
    last_load_error: LoadFailure | None
    queue_depth: int
    max_queue: int
    batches_run: int
    items_run: int


@dataclass
class _Job:
    item: InspectionInput
    prepared: PreparedBatch  # one row, prepared at the serving model's image size when submitted
    future: Future[InferenceResult]
    enqueued_at: float


_STOP = object()


def resolve_device(device: str) -> str:
    """`auto` = CUDA when this process can use it, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def warm_up(model: InspectionModel) -> None:
    """One dummy inference through every stage, so the first real request pays no lazy start-up costs."""
    if not model.objects:
        raise CheckpointError(f"model version {model.version} has no enrolled objects")
    size = model.config.image_size
    with_depth = any("depth" in record.modalities for record in model.objects)
    item = InspectionInput(
        rgb=np.full((size, size, 3), 128, dtype=np.uint8),
        depth=np.full((size, size), 0.5, dtype=np.float32) if with_depth else None,
    )
    model.predict([item])


class Admission:
    """One request's place in the gateway, from before its body is read until its job is queued."""

    def __init__(self, runtime: ModelRuntime) -> None:
        self._runtime: ModelRuntime | None = runtime

    def release(self) -> None:
        """Give the place back (idempotent)."""
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime._release()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ModelRuntime:
    """Owns the serving `InspectionModel` and the inference thread; see the module docstring."""

    def __init__(
        self,
        *,
        device: str = "cpu",
        max_batch_size: int = 8,
        max_batch_wait_ms: float = 4.0,
        max_queue: int = 64,
        backbone_weights: Path | None = None,
        retry_after_s: int = 1,
        backend: str = "auto",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.device = resolve_device(device)
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max(0.0, max_batch_wait_ms) / 1000
        self.max_queue = max_queue
        self.backbone_weights = backbone_weights
        self.retry_after_s = retry_after_s
        self.backend = backend
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._model: InspectionModel | None = None
        self._model_lock = threading.Lock()  # guards the reference only, never held during a model call
        self._load_lock = threading.Lock()  # one load at a time
        self._accept_lock = threading.Lock()  # makes "not draining" + enqueue atomic
        self._state_lock = threading.Lock()
        self._loading = 0
        self._last_load_error: LoadFailure | None = None
        self._draining = False
        self._admitted = 0  # requests admitted and still being read or prepared (not yet queued)
        self._thread: threading.Thread | None = None
        self.batches_run = 0
        self.items_run = 0
        self.largest_batch = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelRuntime:
        return cls(
            device=settings.device,
            max_batch_size=settings.max_batch_size,
            max_batch_wait_ms=settings.max_batch_wait_ms,
            max_queue=settings.max_queue,
            backbone_weights=settings.backbone_weights,
            retry_after_s=settings.retry_after_s,
            backend=settings.inference_backend,
        )

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the runtime is already started")
        self._thread = threading.Thread(target=self._run, name="iumad-inference", daemon=True)
        self._thread.start()

    def begin_drain(self) -> None:
        """Refuse new work from now on (readiness turns 503); queued work still runs."""
        with self._accept_lock:
            self._draining = True

    def close(self, timeout: float = 30.0) -> None:
        """Drain: finish what is queued (up to `timeout` seconds), then stop the inference thread."""
        self.begin_drain()
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                log.error("inference queue did not drain within %.0f s", timeout)
            thread.join(timeout)
        while True:  # anything left behind gets an answer rather than a hung request
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(job, _Job) and job.future.set_running_or_notify_cancel():
                job.future.set_exception(NotReadyError("the gateway is shutting down", self.retry_after_s))
        QUEUE_DEPTH.set(0)

    # --- the serving model ---------------------------------------------------------------------------

    @property
    def model(self) -> InspectionModel | None:
        with self._model_lock:
            return self._model

    @property
    def version(self) -> str | None:
        model = self.model
        return model.version if model is not None else None

    @property
    def last_load_error(self) -> LoadFailure | None:
        return self._last_load_error

    @property
    def state(self) -> RuntimeState:
        if self._draining:
            return RuntimeState.DRAINING
        if self.model is not None:
            return RuntimeState.READY
        if self._loading:
            return RuntimeState.LOADING
        if self._last_load_error is not None:
            return RuntimeState.FAILED
        return RuntimeState.EMPTY

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def status(self) -> RuntimeStatus:
        model = self.model
        return RuntimeStatus(
            state=self.state,
            model_version=model.version if model is not None else None,
            device=self.device,
            backend=model.backend if model is not None else None,
            loading=self._loading > 0,
            last_load_error=self._last_load_error,
            queue_depth=self.queue_depth,
            max_queue=self.max_queue,
            batches_run=self.batches_run,
            items_run=self.items_run,
        )

    def serving_model(self) -> InspectionModel:
        """The model new work runs on, or the error that says why there is none (503 / 409)."""
        state, model = self.state, self.model
        if state is RuntimeState.READY and model is not None:
            return model
        if state is RuntimeState.EMPTY:
            raise NothingEnrolledError()
        if state is RuntimeState.LOADING:
            raise NotReadyError("the model version is still loading; retry shortly", retry_after_s=2)
        if state is RuntimeState.FAILED:
            failure = self.last_load_error
            detail = f": {failure.message}" if failure else ""
            raise NotReadyError(
                f"no model version is serving: the active version failed to load{detail}", retry_after_s=10
            )
        raise NotReadyError("the gateway is shutting down; retry on another gateway", retry_after_s=1)

    def swap(self, new_model: InspectionModel) -> InspectionModel | None:
        """Serve `new_model` from the next batch on; returns the previous model (None at first).

        Does not warm the model: use `load_and_swap` for versions on disk.
        """
        with self._model_lock:
            old, self._model = self._model, new_model
        ACTIVE_MODEL.info(
            {"model_version": new_model.version, "device": self.device, "backend": new_model.backend}
        )
        MODEL_SWAPS.inc()
        log.info("serving model version %s (was %s)", new_model.version, old.version if old else None)
        return old

    def load(self, version_dir: Path) -> InspectionModel:
        """Load and warm a version without serving it (raises on any failure)."""
        started = time.perf_counter()
        model = load_serving_model(
            Path(version_dir),
            backend=self.backend,
            device=self.device,
            backbone_weights=self.backbone_weights,
        )
        warm_up(model)
        log.info("loaded and warmed model version %s in %.2f s", model.version, time.perf_counter() - started)
        return model

    def load_and_swap(self, version_dir: Path) -> InspectionModel:
        """Load + warm `version_dir` beside the serving model, then swap; returns the new model.

        On failure the serving model (if any) keeps serving, the error is recorded (`status()`,
        `/readyz`, `iumad_model_load_failing`) and re-raised: `CheckpointError` for a foreign, corrupt
        or incompatible version, anything else for an unexpected fault.
        """
        with self._state_lock:
            self._loading += 1
        try:
            with self._load_lock:
                try:
                    model = self.load(version_dir)
                except Exception as error:
                    self.record_load_failure(version_dir, error)
                    raise
                self.swap(model)
                self._last_load_error = None
                MODEL_LOADS.labels("success").inc()
                MODEL_LOAD_FAILING.set(0)
                return model
        finally:
            with self._state_lock:
                self._loading -= 1

    def load_and_swap_in_background(self, version_dir: Path) -> threading.Thread:
        """`load_and_swap` in a new thread; the state reads `loading` from the moment this returns."""
        with self._state_lock:
            self._loading += 1  # counted before the thread starts, so readiness never flickers to "empty"

        def load() -> None:
            try:
                self.load_and_swap(version_dir)
            except Exception:  # noqa: BLE001 - recorded by load_and_swap; a background load just logs
                pass
            finally:
                with self._state_lock:
                    self._loading -= 1

        thread = threading.Thread(target=load, name="iumad-model-loader", daemon=True)
        thread.start()
        return thread

    def record_load_failure(self, version_dir: Path, error: Exception) -> None:
        """Remember a failed load for `/readyz` and the metrics (also for failures before `load`)."""
        message = str(error) if isinstance(error, IumadError) else f"{type(error).__name__}: {error}"
        self._last_load_error = LoadFailure(
            str(version_dir), message, datetime.now(UTC).isoformat(timespec="seconds")
        )
        MODEL_LOADS.labels("failure").inc()
        MODEL_LOAD_FAILING.set(1)
        serving = self.version
        if isinstance(error, IumadError):
            log.error("cannot load model version %s: %s; still serving %s", version_dir, message, serving)
        else:
            log.exception("cannot load model version %s; still serving %s", version_dir, serving)

    # --- inference -----------------------------------------------------------------------------------

    def prepare(self, item: InspectionInput) -> PreparedBatch:
        """Numpy preprocessing for the serving model's input size (call it in the decode pool)."""
        model = self.model
        if model is None:
            raise NotReadyError("no model is loaded", self.retry_after_s)
        return prepare_inputs([item], model.config)

    def admit(self) -> Admission:
        """Reserve a place for one request before its body is read: `QueueFullError` (503) when the
        queued and admitted requests already fill `max_queue`, so a busy gateway refuses an upload
        without reading or decoding it. Release it (a `with` block, or `submit(..., admission)`)."""
        with self._accept_lock:
            self._check_accepting()
            if self._queue.qsize() + self._admitted >= self.max_queue:
                raise self._queue_full()
            self._admitted += 1
        return Admission(self)

    def _release(self) -> None:
        with self._accept_lock:
            self._admitted -= 1

    def submit(
        self, item: InspectionInput, prepared: PreparedBatch, admission: Admission | None = None
    ) -> Future[InferenceResult]:
        """Queue one prepared item; raises `QueueFullError` (503) at once when the queue is full.

        With the request's `admission`, its place passes to the queue (released once queued)."""
        job = _Job(item, prepared, Future(), time.perf_counter())
        try:
            with self._accept_lock:
                self._check_accepting()
                try:
                    self._queue.put_nowait(job)
                except queue.Full:
                    raise self._queue_full() from None
        finally:
            if admission is not None:
                admission.release()
        QUEUE_DEPTH.set(self._queue.qsize())
        return job.future

    async def infer(
        self, item: InspectionInput, prepared: PreparedBatch, admission: Admission | None = None
    ) -> InferenceResult:
        """`submit` + await, from the event loop."""
        return await asyncio.wrap_future(self.submit(item, prepared, admission))

    def _check_accepting(self) -> None:
        if self._draining:
            raise NotReadyError("the gateway is shutting down; retry on another gateway", self.retry_after_s)

    def _queue_full(self) -> QueueFullError:
        QUEUE_REJECTIONS.inc()
        return QueueFullError(
            f"the inference queue is full ({self.max_queue} inspections waiting); "
            f"retry after {self.retry_after_s} s",
            self.retry_after_s,
        )

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                break
            jobs = [first]
            stop = False
            deadline = time.perf_counter() + self.max_batch_wait_s
            while len(jobs) < self.max_batch_size:
                if self._admitted == 0 and self._queue.empty():
                    break  # no other request is on its way: waiting would only add latency
                remaining = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                jobs.append(job)
            QUEUE_DEPTH.set(self._queue.qsize())
            try:
                self._run_batch(jobs)
            except Exception as error:  # noqa: BLE001 - the inference thread must never die
                log.exception("inference batch failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
            if stop:
                break

    def _run_batch(self, jobs: list[_Job]) -> None:
        model = self.model  # read once: the whole batch runs on this model, even if a swap happens now
        live = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # skip abandoned ones
        if not live:
            return
        if model is None:
            for job in live:
                job.future.set_exception(NotReadyError("no model is loaded", self.retry_after_s))
            return
        runnable = []
        for job in live:
            name = job.item.object
            if name is not None and name not in model.by_name:  # a swap raced with the request's check
                try:
                    model.object(name)
                except IumadError as error:
                    job.future.set_exception(error)
                continue
            runnable.append(job)
        if not runnable:
            return
        started = time.perf_counter()
        try:
            predictions = self._predict(model, runnable)
        except IumadError:
            if len(runnable) == 1:
                raise
            for job in runnable:  # one bad item must not fail its neighbours: run them one by one
                self._run_one(model, job)
            return
        infer_s = time.perf_counter() - started
        for job, prediction in zip(runnable, predictions, strict=True):
            job.future.set_result(
                InferenceResult(prediction, model, started - job.enqueued_at, infer_s, len(runnable))
            )
        self._count(len(runnable))

    def _run_one(self, model: InspectionModel, job: _Job) -> None:
        started = time.perf_counter()
        try:
            (prediction,) = self._predict(model, [job])
        except Exception as error:  # noqa: BLE001 - answered to this request only
            job.future.set_exception(error)
            return
        job.future.set_result(
            InferenceResult(prediction, model, started - job.enqueued_at, time.perf_counter() - started, 1)
        )
        self._count(1)

    def _count(self, size: int) -> None:
        BATCH_SIZE.observe(size)
        self.batches_run += 1
        self.items_run += size
        self.largest_batch = max(self.largest_batch, size)

    @staticmethod
    def _predict(model: InspectionModel, jobs: list[_Job]) -> list[Prediction]:
        size, grid = model.config.image_size, model.config.map_grid_size
        parts = [
            job.prepared
            if (job.prepared.rgb.shape[-1], job.prepared.depth_valid.shape[-1]) == (size, grid)
            else prepare_inputs([job.item], model.config)
            for job in jobs
        ]  # re-prepare only after a swap to a model with another input size or map grid
        batch = PreparedBatch.concat(parts)
        return model.predict_prepared(batch, [job.item.object for job in jobs])
