"""How masks and anomaly maps travel in JSON, with the decoders clients (and tests) need.

- Binary mask as PNG: a 1-bit greyscale PNG at the input resolution, white (1) = defect, base64.
- Binary mask as RLE: `{"size": [H, W], "counts": [c0, c1, c2, ...]}`. The mask is read row-major
  (row 0 left to right, then row 1, ...); the counts are the lengths of alternating runs, always
  starting with a run of 0s (which is 0 long when the first pixel is a defect), so
  `sum(counts) == H * W`. An all-zero mask is `[H * W]`.
- Continuous anomaly map: `{"png": base64 16-bit greyscale PNG, "min": a, "max": b}`; a pixel value
  v stands for the score `a + v / 65535 * (b - a)` (so the error is at most (b - a) / 131070).
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from model.data.decode import decode_png16

MAP_LEVELS = 65535


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # speed over a few percent of size
    return buffer.getvalue()


def encode_mask_png(mask: np.ndarray) -> str:
    """bool (H, W) -> base64 of a 1-bit PNG."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=bool))  # bool -> mode "1"
    return base64.b64encode(_png_bytes(image)).decode("ascii")


def decode_mask_png(encoded: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.array(image.convert("L")) > 0


def encode_mask_rle(mask: np.ndarray) -> dict[str, list[int]]:
    """bool (H, W) -> {"size": [H, W], "counts": [...]}, row-major, first run counts 0s."""
    height, width = mask.shape
    flat = np.ascontiguousarray(mask, dtype=bool).ravel()
    if flat.size == 0:
        return {"size": [int(height), int(width)], "counts": []}
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    boundaries = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(boundaries).tolist()
    if flat[0]:
        counts.insert(0, 0)
    return {"size": [int(height), int(width)], "counts": [int(c) for c in counts]}


def decode_mask_rle(rle: dict[str, list[int]]) -> np.ndarray:
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height * width}")
    values = np.arange(counts.size) % 2 == 1  # runs alternate 0, 1, 0, ...
    return np.repeat(values, counts).reshape(height, width)


def encode_anomaly_map(anomaly_map: np.ndarray) -> dict[str, str | float]:
    """float (H, W) -> {"png", "min", "max"} with the map linearly quantised to 16 bits."""
    values = np.asarray(anomaly_map, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    levels = np.rint((values - low) / (high - low) * MAP_LEVELS) if high > low else np.zeros_like(values)
    image = Image.fromarray(np.clip(levels, 0, MAP_LEVELS).astype(np.uint16))  # -> mode "I;16"
    return {"png": base64.b64encode(_png_bytes(image)).decode("ascii"), "min": low, "max": high}


def decode_anomaly_map(encoded: dict[str, str | float]) -> np.ndarray:
    """The inverse of `encode_anomaly_map` (up to quantisation): float64 (H, W) scores."""
    levels = decode_png16(base64.b64decode(str(encoded["png"])), name="anomaly_map")
    low, high = float(encoded["min"]), float(encoded["max"])
    return low + levels.astype(np.float64) / MAP_LEVELS * (high - low)
