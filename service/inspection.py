"""One inspection on the gateway's side, after the route has parsed the form: decode, infer,
answer, record. Stages and where they run: decode + preprocess in the decode pool, the model in the
inference thread (`ModelRuntime`), masks / map encoding in the decode pool again; the event loop only
awaits. Recording (metrics, the decision log, the dashboard's recent parts) happens once per answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from starlette.datastructures import UploadFile

from model.data.batches import InspectionInput, PreparedBatch
from model.data.decode import check_file_size, check_same_size, decode_depth, decode_rgb
from model.inference import InspectionModel
from model.network.anomaly_map import resize_map
from service.decision_log import DecisionRecord, utc_now_iso
from service.executors import in_pool
from service.masks import encode_anomaly_map, encode_mask_png, encode_mask_rle
from service.metrics import INSPECT_LATENCY, INSPECTIONS, STAGE_LATENCY
from service.request_context import current_request_id, new_request_id
from service.runtime import Admission, InferenceResult, ModelRuntime
from service.schemas import AnomalyMap, InspectOptions, InspectResponse, RleMask, Timings
from service.scoring import decision_score, score_spread, threshold_in_force
from service.state import AppState


async def run_inspection(
    state: AppState,
    model: InspectionModel,
    admission: Admission,
    rgb_file: UploadFile,
    depth_file: UploadFile | None,
    options: InspectOptions,
    started: float,
) -> InspectResponse:
    """Decode, infer and answer one part on `model`, within `admission`; records it once answered."""
    runtime = state.runtime
    settings = state.settings
    if options.object is not None:
        model.object(options.object)  # 404 before any decoding
    request_id = current_request_id() or new_request_id()
    decoded = await in_pool(
        state.decode_pool,
        decode_part,
        rgb_file,
        depth_file,
        options.object,
        runtime,
        settings.max_image_pixels,
        settings.max_depth_bytes,
        settings.keep_rejected_images,
    )
    decoded_at = time.perf_counter()
    result = await runtime.infer(decoded.item, decoded.prepared, admission)
    timings = {
        "decode": decoded_at - started,
        "read": decoded_at - started - decoded.prepare_s,
        "prepare": decoded.prepare_s,
        "queue": result.queue_s,
        "infer": result.infer_s,
    }
    post_started = time.perf_counter()
    response = await in_pool(
        state.decode_pool,
        build_response,
        state,
        options,
        decoded,
        result,
        request_id,
        {**{k: round(1000 * v, 3) for k, v in timings.items()}, "post": 0.0, "total": 0.0},
    )
    finished = time.perf_counter()
    timings["post"] = finished - post_started
    response.timings_ms.post = round(1000 * timings["post"], 3)
    response.timings_ms.total = round(1000 * (finished - started), 3)
    record_inspection(state, request_id, response, decoded, result, timings, finished - started)
    return response


def record_inspection(
    state: AppState,
    request_id: str,
    response: InspectResponse,
    decoded: DecodedPart,
    result: InferenceResult,
    timings: dict[str, float],
    total_s: float,
) -> None:
    """Metrics, the decision log (with a rejected part's images when kept) and the dashboard's Live view."""
    for stage, seconds in timings.items():
        STAGE_LATENCY.labels(stage).observe(seconds)
    decision = "fail" if response.is_anomalous else "pass"
    INSPECTIONS.labels(response.object, response.model_version, decision).inc()
    INSPECT_LATENCY.labels(response.model_version).observe(total_s)
    state.decisions.record(
        DecisionRecord(
            request_id=request_id,
            time=utc_now_iso(),
            object=response.object,
            object_source=response.object_source,
            model_version=response.model_version,
            score=response.score,
            raw_score=response.raw_score,
            threshold=response.threshold,
            decision=decision,
            latency_ms=round(1000 * total_s, 3),
        ),
        decoded.files if response.is_anomalous else None,
    )
    state.recent.capture(state.decode_pool, decoded.item.rgb, result, response)


@dataclass
class DecodedPart:
    """A part's images decoded and prepared for the network."""

    item: InspectionInput
    prepared: PreparedBatch
    files: dict[str, bytes] | None  # kept only to store a rejected part's images
    prepare_s: float  # resizing and depth preparation for the network (part of the decode stage)


def decode_part(
    rgb_file: UploadFile,
    depth_file: UploadFile | None,
    object_name: str | None,
    runtime: ModelRuntime,
    max_pixels: int,
    max_depth_bytes: int,
    keep_files: bool,
) -> DecodedPart:
    rgb_name = f"rgb {rgb_file.filename!r}"
    check_file_size(rgb_file.size or 0, "rgb", rgb_name, max_pixels, max_depth_bytes)
    rgb_file.file.seek(0)
    rgb_bytes = rgb_file.file.read()
    rgb = decode_rgb(rgb_bytes, name=rgb_name, max_pixels=max_pixels)
    depth = None
    depth_bytes = None
    if depth_file is not None:
        depth_name = f"depth {depth_file.filename!r}"
        check_file_size(depth_file.size or 0, "depth", depth_name, max_pixels, max_depth_bytes)
        depth_file.file.seek(0)
        depth_bytes = depth_file.file.read()
        depth = decode_depth(depth_bytes, name=depth_name, max_pixels=max_pixels, max_bytes=max_depth_bytes)
        check_same_size(rgb, depth, "rgb and depth")
    item = InspectionInput(rgb=rgb, depth=depth, object=object_name)
    files = None
    if keep_files:
        files = {"rgb": rgb_bytes} | ({"depth": depth_bytes} if depth_bytes is not None else {})
    started = time.perf_counter()
    prepared = runtime.prepare(item)
    return DecodedPart(item, prepared, files, time.perf_counter() - started)


def build_response(
    state: AppState,
    options: InspectOptions,
    decoded: DecodedPart,
    result: InferenceResult,
    request_id: str,
    timings: dict[str, float],
) -> InspectResponse:
    """Threshold, score, mask and map: everything after the model call (runs in the decode pool)."""
    prediction = result.prediction
    record = result.model.object(prediction.object)
    threshold, source = threshold_in_force(record, state.thresholds.get(record.name), options.threshold)
    score = decision_score(prediction.raw_score, threshold, score_spread(record))
    is_anomalous = prediction.raw_score > threshold
    height, width = decoded.item.rgb.shape[:2]

    full_map = None
    if is_anomalous or options.return_map:
        full_map = resize_map(torch.from_numpy(prediction.anomaly_map), height, width).numpy()
    if is_anomalous and full_map is not None:
        mask = full_map > threshold
    else:
        mask = np.zeros((height, width), dtype=bool)  # a passing part has no defect to show

    encoded_mask: str | RleMask | None = None
    if options.mask == "png":
        encoded_mask = encode_mask_png(mask)
    elif options.mask == "rle":
        encoded_mask = RleMask(**encode_mask_rle(mask))
    anomaly_map = (
        AnomalyMap(**encode_anomaly_map(full_map)) if options.return_map and full_map is not None else None
    )
    return InspectResponse(
        request_id=request_id,
        object=prediction.object,
        object_source=prediction.object_source,
        object_confidence=prediction.object_confidence,
        is_anomalous=is_anomalous,
        score=score,
        raw_score=prediction.raw_score,
        threshold=threshold,
        threshold_source=source,
        defect_area_fraction=float(mask.mean()) if mask.size else 0.0,
        mask_format=options.mask,
        mask=encoded_mask,
        anomaly_map=anomaly_map,
        modalities=prediction.modalities,
        model_version=result.model_version,
        timings_ms=Timings(**timings),
        warnings=list(prediction.warnings),
    )
