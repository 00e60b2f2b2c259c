"""The dashboard's memory of recent inspections: a small bounded ring, per-object counters and scores.

`RecentInspections.capture` is called by `POST /inspect` on the event loop once the answer is ready.
It only does cheap bookkeeping there (counters, the object's raw-score history) and hands the making
of a *snapshot* (the RGB reduced to <= `THUMBNAIL_SIZE` px and the anomaly map at that size) to the
decode pool, without waiting for it. At most `max_pending` of those jobs wait at a time: under a burst
the extra parts are counted but get no pictures, so a busy line never queues full-size images in memory.

The PNGs themselves (thumbnail, heat map, mask outline) are made only when the dashboard asks for
one of them, and then kept: encoding them costs ~12 ms of CPU per part at 224 px, as much as a
quarter of the model's own time, and a line inspects far more parts than anyone looks at.

Memory is bounded: `capacity` entries of one snapshot (and, once viewed, three small PNGs) each, and
`scores_per_object` scores for at most `max_objects` objects. Everything is per gateway process and
lost on restart.

The heat map is coloured on the decision-score scale of its object, so colours mean the same on every
part: transparent at or below a typical normal part (score 0), yellow at the threshold (0.5), orange at
1, red at 2 and above (see `service.scoring`). The outline is the border of the response's mask (pixels over
the threshold, only for a rejected part) at thumbnail resolution.
"""

from __future__ import annotations

import io
import logging
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from model.network.anomaly_map import resize_map
from service.scoring import score_spread

log = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256
PictureKind = Literal["rgb", "heatmap", "outline"]

# Colour stops of the heat map on the decision-score scale: (score, (r, g, b), alpha 0..1). Light
# enough at the top that the defect itself stays visible under it.
_STOPS = (
    (0.0, (255, 230, 0), 0.0),
    (0.5, (255, 200, 0), 0.35),
    (1.0, (240, 60, 0), 0.5),
    (2.0, (210, 0, 0), 0.6),
)
_OUTLINE_RGBA = (0, 255, 255, 255)  # cyan: visible on red, yellow and most parts


@dataclass(frozen=True)
class Pictures:
    rgb: bytes
    heatmap: bytes
    outline: bytes | None  # None: no defect pixels (a passing part)
    width: int
    height: int

    def get(self, kind: PictureKind) -> bytes | None:
        return {"rgb": self.rgb, "heatmap": self.heatmap, "outline": self.outline}[kind]


@dataclass(frozen=True)
class Snapshot:
    """What the pictures are made from, already at thumbnail size (so the ring holds no full images)."""

    rgb: np.ndarray  # (h, w, 3) uint8
    anomaly_map: np.ndarray  # (h, w) float32, raw scores
    threshold: float
    spread: float
    is_anomalous: bool
    has_outline: bool  # a rejected part with mask pixels at this size


@dataclass
class RecentEntry:
    id: str
    sequence: int  # capture order
    fields: dict[str, Any]  # what GET /dashboard/recent shows
    snapshot: Snapshot | None = None
    pictures: Pictures | None = None  # made from the snapshot on the first request for one of them
    pending: bool = False  # the snapshot is being made


@dataclass
class _ObjectStats:
    inspected: int = 0
    rejected: int = 0
    scores: deque[tuple[float, bool]] = field(default_factory=deque)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def thumbnail_shape(height: int, width: int, limit: int = THUMBNAIL_SIZE) -> tuple[int, int]:
    """The (height, width) that fits in `limit` px, keeping the aspect ratio (never enlarging)."""
    scale = min(1.0, limit / max(height, width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


def heatmap_rgba(scores: np.ndarray) -> np.ndarray:
    """Decision scores (H, W) -> uint8 RGBA (H, W, 4) on the fixed colour scale of `_STOPS`."""
    positions = np.array([stop[0] for stop in _STOPS])
    values = np.clip(np.nan_to_num(scores, nan=0.0), positions[0], positions[-1])
    rgba = np.empty((*values.shape, 4), dtype=np.float64)
    for channel in range(3):
        rgba[..., channel] = np.interp(values, positions, [stop[1][channel] for stop in _STOPS])
    rgba[..., 3] = 255.0 * np.interp(values, positions, [stop[2] for stop in _STOPS])
    return np.rint(rgba).astype(np.uint8)


def outline_rgba(mask: np.ndarray) -> np.ndarray | None:
    """A mask's border, two pixels wide, as RGBA (transparent elsewhere); None for an empty mask."""
    if not mask.any():
        return None
    border = mask & ~ndimage.binary_erosion(mask, border_value=0)
    border = ndimage.binary_dilation(border)
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[border] = _OUTLINE_RGBA
    return rgba


def make_snapshot(
    rgb: np.ndarray,
    anomaly_map: np.ndarray,
    threshold: float,
    spread: float,
    is_anomalous: bool,
) -> Snapshot:
    """The RGB and the anomaly map reduced to the thumbnail size (cheap: no PNG encoding)."""
    height, width = thumbnail_shape(*rgb.shape[:2])
    small_rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if small_rgb.shape[:2] != (height, width):
        # torch's antialiased bilinear on uint8: about 1 ms at 800 x 800, where PIL's Lanczos took 13 ms
        # of every inspection's CPU for a picture few of them ever show.
        image = torch.from_numpy(small_rgb).permute(2, 0, 1).unsqueeze(0)
        small = F.interpolate(
            image, size=(height, width), mode="bilinear", antialias=True, align_corners=False
        )
        small_rgb = small[0].permute(1, 2, 0).contiguous().numpy()
    small_map = resize_map(torch.from_numpy(np.asarray(anomaly_map, dtype=np.float32)), height, width).numpy()
    has_outline = bool(is_anomalous) and bool((small_map > threshold).any())
    return Snapshot(small_rgb, small_map, float(threshold), float(spread), bool(is_anomalous), has_outline)


def render_pictures(snapshot: Snapshot) -> Pictures:
    """The RGB thumbnail, the heat map and the mask outline, all at the snapshot's size."""
    height, width = snapshot.anomaly_map.shape
    scores = 0.5 + (snapshot.anomaly_map.astype(np.float64) - snapshot.threshold) / (2.0 * snapshot.spread)
    heatmap = Image.fromarray(heatmap_rgba(scores), mode="RGBA")
    outline = outline_rgba(snapshot.anomaly_map > snapshot.threshold) if snapshot.has_outline else None
    return Pictures(
        rgb=_png(Image.fromarray(snapshot.rgb)),
        heatmap=_png(heatmap),
        outline=_png(Image.fromarray(outline, mode="RGBA")) if outline is not None else None,
        width=width,
        height=height,
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RecentInspections:
    """Thread-safe: `capture` runs on the event loop, the picture jobs in the decode pool."""

    def __init__(
        self,
        capacity: int = 50,
        scores_per_object: int = 500,
        max_objects: int = 256,
        max_pending: int = 4,
    ) -> None:
        self.capacity = capacity
        self.scores_per_object = scores_per_object
        self.max_objects = max_objects
        self.max_pending = max_pending
        self.started_at = _now_iso()
        self._boot = secrets.token_hex(3)  # ids never repeat across restarts (browsers cache pictures)
        self._sequence = 0
        self._pending = 0
        self._skipped_pictures = 0
        self._entries: deque[RecentEntry] = deque(maxlen=capacity)
        self._stats: OrderedDict[str, _ObjectStats] = OrderedDict()
        self._lock = threading.Lock()

    # --- recording ---------------------------------------------------------------------------------

    def capture(self, pool: Executor, rgb: np.ndarray, result: Any, response: Any) -> None:
        """Record one answered inspection (`InferenceResult`, `InspectResponse`); never blocks, never raises
        (the dashboard must not turn an answered inspection into an error)."""
        try:
            self._capture(pool, rgb, result, response)
        except Exception:  # noqa: BLE001
            log.exception(
                "cannot record inspection %s for the dashboard", getattr(response, "request_id", "?")
            )

    def _capture(self, pool: Executor, rgb: np.ndarray, result: Any, response: Any) -> None:
        rejected = bool(response.is_anomalous)
        entry = RecentEntry(
            id="",
            sequence=0,
            fields={
                "time": _now_iso(),
                "request_id": response.request_id,
                "object": response.object,
                "object_source": response.object_source,
                "decision": "fail" if rejected else "pass",
                "is_anomalous": rejected,
                "score": response.score,
                "raw_score": response.raw_score,
                "threshold": response.threshold,
                "threshold_source": response.threshold_source,
                "defect_area_fraction": response.defect_area_fraction,
                "model_version": response.model_version,
                "modalities": list(response.modalities),
                "image_size": [int(rgb.shape[0]), int(rgb.shape[1])],
                "warnings": list(response.warnings),
            },
        )
        with self._lock:  # the ring keeps capture order; the pictures are filled in later
            self._sequence += 1
            entry.sequence = self._sequence
            entry.id = entry.fields["id"] = f"{self._boot}-{entry.sequence}"
            stats = self._stats_of(response.object)
            stats.inspected += 1
            stats.rejected += int(rejected)
            stats.scores.append((float(response.raw_score), rejected))
            entry.pending = self._pending < self.max_pending
            if entry.pending:
                self._pending += 1
            else:
                self._skipped_pictures += 1
            self._entries.append(entry)
        if not entry.pending:
            return
        try:
            spread = score_spread(result.model.object(response.object))
            pool.submit(
                self._picture_job(entry, rgb, result.prediction.anomaly_map, response.threshold, spread)
            )
        except RuntimeError:  # the pool is shut down (draining): the entry stays without pictures
            with self._lock:
                self._pending -= 1
                entry.pending = False

    def _picture_job(
        self, entry: RecentEntry, rgb: np.ndarray, anomaly_map: np.ndarray, threshold: float, spread: float
    ) -> Callable[[], None]:
        def run() -> None:
            snapshot = None
            try:
                snapshot = make_snapshot(
                    rgb, anomaly_map, threshold, spread, bool(entry.fields["is_anomalous"])
                )
            except Exception:  # noqa: BLE001 - the dashboard must never break inspection
                log.exception("cannot keep the dashboard pictures of %s", entry.fields["request_id"])
            finally:
                with self._lock:
                    self._pending -= 1
                    entry.snapshot, entry.pending = snapshot, False

        return run

    def _stats_of(self, name: str) -> _ObjectStats:
        stats = self._stats.get(name)
        if stats is None:
            if len(self._stats) >= self.max_objects:
                self._stats.popitem(last=False)  # forget the longest-known object
            stats = self._stats[name] = _ObjectStats(scores=deque(maxlen=self.scores_per_object))
        return stats

    # --- reading -----------------------------------------------------------------------------------

    def recent(
        self, object_name: str | None = None, decision: str | None = None, limit: int = 50
    ) -> list[dict]:
        """Newest first, filtered; `pictures` is the thumbnail size and whether there is an outline, or
        null (`pictures_pending` says whether they are still being made)."""
        with self._lock:
            entries = [(entry, entry.snapshot, entry.pending) for entry in reversed(self._entries)]
        chosen = []
        for entry, snapshot, pending in entries:
            if object_name is not None and entry.fields["object"] != object_name:
                continue
            if decision is not None and entry.fields["decision"] != decision:
                continue
            chosen.append(
                {
                    **entry.fields,
                    "pictures_pending": pending,
                    "pictures": None
                    if snapshot is None
                    else {
                        "width": snapshot.rgb.shape[1],
                        "height": snapshot.rgb.shape[0],
                        "outline": snapshot.has_outline,
                    },
                }
            )
            if len(chosen) >= limit:
                break
        return chosen

    def picture(self, entry_id: str, kind: PictureKind) -> bytes | None:
        """The PNG, made on the first request for any of the entry's pictures (call it off the event loop)."""
        with self._lock:
            entry = next((entry for entry in self._entries if entry.id == entry_id), None)
            if entry is None:
                return None
            pictures, snapshot = entry.pictures, entry.snapshot
        if pictures is None:
            if snapshot is None:
                return None
            pictures = render_pictures(snapshot)  # two requests at once may both render: same bytes
            with self._lock:
                entry.pictures = pictures
        return pictures.get(kind)

    def counters(self) -> dict[str, dict[str, float | int]]:
        """Per object, since this gateway started: inspected, rejected, reject_rate."""
        with self._lock:
            counts = {name: (stats.inspected, stats.rejected) for name, stats in self._stats.items()}
        return {
            name: {"inspected": inspected, "rejected": rejected, "reject_rate": rejected / inspected}
            for name, (inspected, rejected) in sorted(counts.items())
            if inspected
        }

    def scores(self, object_name: str | None = None) -> dict[str, dict[str, Any]]:
        """Per object: the latest raw scores (oldest first) and whether each part was rejected."""
        with self._lock:
            chosen = {
                name: list(stats.scores)
                for name, stats in self._stats.items()
                if object_name is None or name == object_name
            }
        return {
            name: {"raw_scores": [score for score, _ in items], "rejected": [flag for _, flag in items]}
            for name, items in sorted(chosen.items())
        }

    @property
    def skipped_pictures(self) -> int:
        with self._lock:
            return self._skipped_pictures
