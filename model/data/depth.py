"""Depth map -> network input, shared by training, evaluation and the service so they never drift apart.

Order of operations, and why:

1. Resize first, weighting every pixel by its validity (normalised convolution: resize z*valid and
   valid with the same antialiased filter, divide). Invalid pixels never blend into valid ones, and all
   later steps run on the small size x size grid, which keeps an 800x800 map at a few milliseconds.
2. Fill the cells that had no valid support at all from the nearest valid cell (exact Euclidean
   distance transform). Filled values are kept in the output rather than zeroed: sensor dropouts
   move from capture to capture, and a hard black hole would look like a defect to the network.
3. Optionally subtract the background plane, fitted robustly on the image border.
4. Normalise per image to the 1st..99th percentile of the valid z, nearer = brighter, clip to [0, 1].
5. Replicate to 3 channels for the ImageNet backbone.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from model.errors import InputError

# Cells whose resized validity weight is below this had (almost) no valid pixel under the filter.
MIN_SUPPORT = 1e-3
# Depth range below which a map is treated as flat (avoids dividing sensor noise into full contrast).
MIN_RANGE = 1e-6
BORDER_FRACTION = 0.06
MAX_PLANE_POINTS = 2048
LOW_PERCENTILE, HIGH_PERCENTILE = 1.0, 99.0


def resize_valid(z: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Validity-weighted antialiased resize of a NaN-marked map -> (z, valid) at size x size."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    stacked = torch.empty((1, 2, *z.shape), dtype=torch.float32)
    torch.nan_to_num(torch.from_numpy(z), nan=0.0, posinf=0.0, neginf=0.0, out=stacked[0, 0])
    stacked[0, 1].numpy()[...] = np.isfinite(z)  # numpy's isfinite is ~10x faster than torch's here
    if stacked.shape[-2:] != (size, size):
        stacked = F.interpolate(
            stacked, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    weighted, weight = stacked[0, 0].numpy(), stacked[0, 1].numpy()
    small_valid = weight > MIN_SUPPORT
    resized = np.divide(weighted, weight, out=np.zeros_like(weighted), where=small_valid)
    return resized, small_valid


def fill_nearest(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each invalid cell takes the value of its nearest valid cell."""
    if valid.all():
        return z
    indices = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return z[tuple(indices)]


def fit_border_plane(
    z: np.ndarray, valid: np.ndarray, border: float = BORDER_FRACTION, iterations: int = 4
) -> np.ndarray | None:
    """Plane (a, b, c) with z ~ a*u + b*v + c (u, v in [-1, 1]) fitted on the valid border cells.

    The border is usually the table or conveyor the part lies on. Refitting on inliers within three
    robust standard deviations drops the parts of an object that reach the border. Falls back to all
    valid cells when the border has fewer than 3; None when even that is impossible.
    """
    height, width = z.shape
    band = np.zeros_like(valid)
    by, bx = max(1, round(border * height)), max(1, round(border * width))
    band[:by], band[-by:], band[:, :bx], band[:, -bx:] = True, True, True, True
    points = band & valid
    if points.sum() < 3:
        points = valid
    if points.sum() < 3:
        return None
    v, u = np.nonzero(points)
    step = max(1, u.size // MAX_PLANE_POINTS)  # an even subsample fits the same plane, faster
    v, u = v[::step], u[::step]
    design = np.stack(
        [u / max(width - 1, 1) * 2 - 1, v / max(height - 1, 1) * 2 - 1, np.ones(u.size)], axis=1
    )
    target = z[v, u].astype(np.float64)
    inliers = np.ones(target.size, dtype=bool)
    coefficients = None
    for _ in range(iterations):
        if inliers.sum() < 3:
            break
        coefficients, *_ = np.linalg.lstsq(design[inliers], target[inliers], rcond=None)
        residual = target - design @ coefficients
        scale = 1.4826 * np.median(np.abs(residual[inliers] - np.median(residual[inliers])))
        new_inliers = np.abs(residual) <= max(3.0 * scale, 1e-9)
        if np.array_equal(new_inliers, inliers):
            break
        inliers = new_inliers
    return coefficients


def remove_background_plane(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """z minus the robust border plane (objects then sit at negative values, the table at about 0)."""
    coefficients = fit_border_plane(z, valid)
    if coefficients is None:
        return z
    height, width = z.shape
    u = np.linspace(-1.0, 1.0, width) if width > 1 else np.full(1, -1.0)
    v = np.linspace(-1.0, 1.0, height) if height > 1 else np.full(1, -1.0)
    plane = coefficients[0] * u[None, :] + coefficients[1] * v[:, None] + coefficients[2]
    return (z - plane).astype(np.float32)


def normalise_nearer_brighter(z: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Map the 1st..99th percentile of valid z to 1..0 (near = bright), clipped to [0, 1].

    Percentiles instead of min/max so a few flying pixels cannot squash the whole surface into one grey.
    """
    low, high = np.percentile(z[valid], [LOW_PERCENTILE, HIGH_PERCENTILE])
    scale = max(float(high - low), MIN_RANGE)
    return np.clip((high - z) / scale, 0.0, 1.0).astype(np.float32)


def prepare_depth(z: np.ndarray, size: int, remove_plane: bool = False) -> np.ndarray:
    """float HxW z (NaN = invalid) -> float32 (3, size, size) in [0, 1], nearer = brighter."""
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise InputError(f"depth map has shape {z.shape}; expected HxW")
    if z.dtype.kind not in "fiu":
        raise InputError(f"depth map has dtype {z.dtype}; expected float")
    if size <= 0:
        raise InputError(f"image size must be positive, got {size}")
    resized, valid = resize_valid(z, size)
    if not valid.any():
        raise InputError("depth map has no valid depth pixels")
    filled = fill_nearest(resized, valid)
    if remove_plane:
        filled = remove_background_plane(filled, valid)
    normalised = normalise_nearer_brighter(filled, valid)
    return np.ascontiguousarray(np.broadcast_to(normalised, (3, size, size)))
