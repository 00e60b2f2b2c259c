"""A synthetic RGB-D defect benchmark in the MVTec 3D-AD layout, for tests, demos and CPU-sized benchmarks.

Ten object types (shape, height profile, texture, colour) lie on a slightly tilted table seen by a
pinhole camera from about 0.45 m. Each object has its own fixed inspection station (table texture,
table pose, lamp, table areas the sensor cannot measure), and every image varies around it like a
real capture: pose (shift, rotation, scale), shape proportions, lamp direction, exposure, white
balance, dust, natural surface marks (chips, grain, freckles, moulding marks), RGB sensor noise,
depth noise, and structured-light dropouts (steep walls, projector shadow, dark or shiny patches),
stored as (0, 0, 0) in the xyz cloud. Test images carry one small, low-contrast defect:

    contamination  RGB only    a stain of foreign colour
    dent, bump     depth only  a shallow smooth deformation (2-3.5 mm; the diffuse light barely shows it)
    crack          both        a thin dark groove
    hole           both        a small hole through the part
    cut            both        a notch missing from the outline

and a ground-truth mask that covers exactly the changed pixels of the defect. Every image has its own
seed derived from (seed, object, split, index), so an image never depends on what was generated
before it, and a defective image is its normal twin plus the defect (tests use that to check masks).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageDraw
from scipy import ndimage

from model.errors import InputError

DEFECTS = ("contamination", "dent", "bump", "crack", "hole", "cut")
DEFECT_MODALITY = {
    "contamination": "rgb",
    "dent": "depth",
    "bump": "depth",
    "crack": "both",
    "hole": "both",
    "cut": "both",
}
TABLE_Z = 0.45  # metres from the camera
FIELD_OF_VIEW = 0.26  # metres of table across the image at TABLE_Z
OBJECT_SCALE = 1.15  # enlarges every shape (their sizes below are in units of the image width)


@dataclass(frozen=True)
class ObjectStyle:
    height: float  # metres at the top of the profile
    colour: tuple[float, float, float]  # albedo
    table: tuple[float, float, float]  # albedo of the table it lies on
    shine: float  # specular strength (metals, glaze)
    bevel: float  # edge rounding, in local units


OBJECTS: dict[str, ObjectStyle] = {
    "disc": ObjectStyle(0.012, (0.72, 0.52, 0.30), (0.55, 0.57, 0.60), 0.02, 0.03),
    "ring": ObjectStyle(0.015, (0.13, 0.13, 0.14), (0.62, 0.60, 0.55), 0.15, 0.0),
    "tile": ObjectStyle(0.008, (0.20, 0.52, 0.55), (0.58, 0.58, 0.58), 0.25, 0.015),
    "cylinder": ObjectStyle(0.024, (0.74, 0.57, 0.37), (0.30, 0.33, 0.40), 0.03, 0.0),
    "dome": ObjectStyle(0.035, (0.88, 0.55, 0.35), (0.42, 0.45, 0.42), 0.05, 0.0),
    "gear": ObjectStyle(0.010, (0.60, 0.61, 0.64), (0.25, 0.26, 0.28), 0.35, 0.01),
    "bar": ObjectStyle(0.015, (0.70, 0.72, 0.77), (0.35, 0.30, 0.26), 0.30, 0.02),
    "wave": ObjectStyle(0.010, (0.25, 0.58, 0.27), (0.60, 0.60, 0.62), 0.10, 0.015),
    "plate": ObjectStyle(0.004, (0.80, 0.67, 0.32), (0.22, 0.24, 0.30), 0.30, 0.01),
    "pyramid": ObjectStyle(0.030, (0.70, 0.36, 0.23), (0.55, 0.55, 0.52), 0.02, 0.0),
}


@dataclass(frozen=True)
class SyntheticImage:
    rgb: np.ndarray  # uint8 HxWx3
    xyz: np.ndarray  # float32 HxWx3, (0, 0, 0) = no measurement
    gt: np.ndarray  # bool HxW


# ------------------------------------------------------------------------------------------ randomness


def image_rng(seed: int, object_name: str, split: str, index: int, stream: str) -> np.random.Generator:
    """A generator that depends only on its arguments (crc32 is stable across runs, unlike hash())."""
    key = [
        seed,
        zlib.crc32(object_name.encode()),
        zlib.crc32(split.encode()),
        index,
        zlib.crc32(stream.encode()),
    ]
    return np.random.default_rng(np.random.SeedSequence(key))


@lru_cache(maxsize=64)
def _spline_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells + 3) cubic B-spline weights: row i blends the 4 control points around pixel i."""
    position = np.linspace(0.0, cells, size) + 1.0
    first = np.minimum(np.floor(position).astype(int), cells)
    f = position - first
    weights = np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], 1) / 6
    matrix = np.zeros((size, cells + 3))
    for offset in range(4):
        matrix[np.arange(size), first - 1 + offset] = weights[:, offset]
    return matrix.astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise with unit std: a random `cells` x `cells` grid through a cubic B-spline."""
    control = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    matrix = _spline_matrix(size, cells)
    field = matrix @ control @ matrix.T
    return (field - field.mean()) / (field.std() + 1e-6)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ------------------------------------------------------------------------------------------- shapes
# Each shape maps local coordinates (p, q) (object frame, units of image width) to a signed distance
# to its outline (positive inside) and a top profile in [0, 1]; `shape` holds its jittered proportions.


def _disc(p, q, shape):
    r = np.hypot(p, q)
    return 0.27 * shape[0] - r, 1.0 + 0.08 * (1.0 - (r / 0.27) ** 2)


def _ring(p, q, shape):
    r = np.hypot(p, q)
    centre, half_width = 0.21 * shape[0], 0.075 * shape[1]
    inside = 1.0 - ((r - centre) / half_width) ** 2
    return half_width - np.abs(r - centre), np.sqrt(np.clip(inside, 0.0, 1.0))


def _tile(p, q, shape):
    half = 0.25 * shape[0]
    spacing = 2 * half / 4
    from_centre = np.maximum(
        np.abs((p + half) % spacing - spacing / 2), np.abs((q + half) % spacing - spacing / 2)
    )
    grooves = np.exp(-(((spacing / 2 - from_centre) / 0.006) ** 2))  # a 4x4 grid of grooves
    return np.minimum(half - np.abs(p), half - np.abs(q)), 1.0 - 0.25 * grooves


def _cylinder(p, q, shape):
    half_length, radius = 0.3 * shape[0], 0.075 * shape[1]
    along = np.clip(p, -half_length, half_length)
    distance = np.hypot(p - along, q)
    return radius - distance, np.sqrt(np.clip(1.0 - (distance / radius) ** 2, 0.0, 1.0))


def _dome(p, q, shape):
    rho = np.hypot(p / (0.26 * shape[0]), q / (0.21 * shape[1]))
    return (1.0 - rho) * 0.21, np.sqrt(np.clip(1.0 - rho**2, 0.0, 1.0))


def _gear(p, q, shape):
    r, angle = np.hypot(p, q), np.arctan2(q, p)
    outer = 0.235 * shape[0] + 0.028 * np.clip(2.5 * np.cos(12 * angle), -1.0, 1.0)
    return np.minimum(outer - r, r - 0.065 * shape[1]), np.ones_like(p)


def _bar(p, q, shape):
    return np.minimum(0.32 * shape[0] - np.abs(p), 0.075 * shape[1] - np.abs(q)), np.ones_like(p)


def _wave(p, q, shape):
    half = 0.25 * shape[0]
    ripples = 0.5 + 0.5 * np.sin(2 * np.pi * p / (0.11 * shape[1]))
    return np.minimum(half - np.abs(p), half - np.abs(q)), 0.55 + 0.45 * ripples


def _plate(p, q, shape):
    half_p, half_q = 0.3 * shape[0], 0.2 * shape[1]
    outline = np.minimum(half_p - np.abs(p), half_q - np.abs(q))
    holes = np.hypot(np.abs(p) - (half_p - 0.06), np.abs(q) - (half_q - 0.06)) - 0.032
    slot = np.hypot(np.clip(p, -0.07, 0.07) - p, q) - 0.022
    return np.minimum(outline, np.minimum(holes, slot)), np.ones_like(p)


def _pyramid(p, q, shape):
    half = 0.24 * shape[0]
    inside = half - np.maximum(np.abs(p), np.abs(q))
    return inside, np.clip(inside / half, 0.0, 1.0)


SHAPES: dict[str, Callable] = {
    "disc": _disc,
    "ring": _ring,
    "tile": _tile,
    "cylinder": _cylinder,
    "dome": _dome,
    "gear": _gear,
    "bar": _bar,
    "wave": _wave,
    "plate": _plate,
    "pyramid": _pyramid,
}


def object_names(count: int) -> list[str]:
    """`count` object names: the ten types, then colour variants ("disc_v2", ...) beyond ten."""
    if count < 1:
        raise InputError(f"need at least one object, got {count}")
    base = list(OBJECTS)
    return [base[i % len(base)] + ("" if i < len(base) else f"_v{i // len(base) + 1}") for i in range(count)]


def _base_type(name: str) -> tuple[str, int]:
    base, _, variant = name.partition("_v")
    return base, int(variant) if variant else 1


# ------------------------------------------------------------------------------------------ texture


def _surface_albedo(kind: str, style: ObjectStyle, p, q, rng, size: int, variant: int) -> np.ndarray:
    """Object albedo HxWx3 with the natural marks of its material (they resemble defects a little)."""
    colour = np.array(style.colour, np.float32)
    if variant > 1:  # colour variants beyond ten objects: rotate the channels
        colour = np.roll(colour, variant - 1)
    colour = colour * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
    mottle = smooth_noise(rng, size, 6)
    fine = smooth_noise(rng, size, max(8, size // 3))
    shade = 1.0 + 0.05 * mottle + 0.03 * fine
    if kind == "disc":  # baked biscuit with dark chips, some of them faint
        chips = smooth_noise(rng, size, max(8, size // 10))
        shade = shade * (1.0 - 0.45 * smoothstep((chips - 1.6) / 0.4))
    elif kind == "cylinder":  # wood grain along the axis
        grain = np.sin(2 * np.pi * (q * 55.0 + 0.8 * smooth_noise(rng, size, 5)))
        shade = shade * (1.0 + 0.07 * grain)
    elif kind == "dome":  # skin with a blush and small freckles
        blush = smoothstep((smooth_noise(rng, size, 3) + 1.0) / 2.5)
        freckles = smoothstep((smooth_noise(rng, size, max(8, size // 8)) - 2.0) / 0.5)
        colour_map = colour[None, None] * shade[..., None]
        colour_map = colour_map * (1.0 - 0.25 * blush[..., None] * np.array([0.0, 1.0, 0.8], np.float32))
        return colour_map * (1.0 - 0.18 * freckles[..., None])
    elif kind in ("gear", "bar", "plate"):  # brushed metal
        direction = np.arctan2(q, p) if kind == "gear" else p
        brushed = np.sin(2 * np.pi * (direction * 90.0 + 0.5 * fine))
        shade = shade * (1.0 + 0.03 * brushed)
    elif kind == "pyramid":  # fired clay grain
        shade = shade * (1.0 + 0.06 * smooth_noise(rng, size, max(8, size // 2)))
    elif kind == "ring":  # rubber with moulding marks
        shade = shade * (1.0 + 0.15 * smoothstep((smooth_noise(rng, size, max(8, size // 12)) - 1.5) / 0.5))
    return colour[None, None] * shade[..., None]


@dataclass(frozen=True)
class Station:
    """What stays fixed at one inspection station (one object type): the table, its pose under the
    camera, the lamp, and the table areas the depth sensor cannot measure. Images vary around it."""

    table_albedo: np.ndarray  # HxWx3
    table_z: float
    tilt: tuple[float, float]  # metres of height change across the image, along u and v
    light: tuple[float, float]
    ambient: float
    unmeasurable: np.ndarray  # HxW noise; its top quantile is where the table never gives depth
    unmeasurable_fraction: float


@lru_cache(maxsize=32)
def station_for(seed: int, object_name: str, size: int) -> Station:
    rng = image_rng(seed, object_name, "station", 0, "station")
    kind, _ = _base_type(object_name)
    colour = np.array(OBJECTS[kind].table, np.float32) * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
    texture = 1.0 + 0.05 * smooth_noise(rng, size, 4) + 0.03 * smooth_noise(rng, size, max(8, size // 2))
    return Station(
        table_albedo=(colour[None, None] * texture[..., None]).astype(np.float32),
        table_z=TABLE_Z + rng.normal(0.0, 0.01),
        tilt=tuple(rng.normal(0.0, 0.002, 2)),
        light=(rng.normal(-0.25, 0.1), rng.normal(-0.35, 0.1)),
        ambient=rng.uniform(0.32, 0.42),
        unmeasurable=smooth_noise(rng, size, max(6, size // 16)),
        unmeasurable_fraction=rng.uniform(0.02, 0.2),
    )


def _table_albedo(station: Station, rng, size: int) -> np.ndarray:
    """The station's table with this capture's dust: a few faint specks in new places every time."""
    specks = smoothstep((smooth_noise(rng, size, max(8, size // 6)) - 2.6) / 0.4)
    return station.table_albedo * (1.0 - 0.08 * specks)[..., None]


# ------------------------------------------------------------------------------------------ defects


@dataclass
class Scene:
    """What a defect may change before the scene is rendered."""

    height: np.ndarray  # metres above the table
    coverage: np.ndarray  # 0..1 object coverage (antialiased silhouette)
    albedo: np.ndarray  # object albedo HxWx3 (used where coverage > 0)
    table_albedo: np.ndarray
    hidden_relief: np.ndarray  # part of `height` the diffuse light barely shows (depth-only defects)


def _pick_point(candidates: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    rows, cols = np.nonzero(candidates)
    if rows.size == 0:
        raise InputError("synthetic object too small for a defect at this image size")
    pick = rng.integers(rows.size)
    return int(rows[pick]), int(cols[pick])


def _interior(scene: Scene, margin: float) -> np.ndarray:
    inside = scene.coverage > 0.99
    candidates = ndimage.binary_erosion(inside, iterations=max(1, int(np.ceil(margin))))
    return candidates if candidates.any() else inside


def _radius_field(size: int, centre: tuple[int, int]) -> np.ndarray:
    v, u = np.ogrid[0:size, 0:size]
    return np.hypot(v - centre[0], u - centre[1]).astype(np.float32)


def _crack_path(size: int, start: tuple[int, int], length: float, width: float, rng) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    v, u = float(start[0]), float(start[1])
    angle = rng.uniform(0, 2 * np.pi)
    for _ in range(int(length * 2)):
        angle += rng.normal(0.0, 0.25)
        v, u = v + 0.5 * np.sin(angle), u + 0.5 * np.cos(angle)
        if 0 <= v < size and 0 <= u < size:
            mask[int(v), int(u)] = True
    if width > 1.5:
        mask = ndimage.binary_dilation(mask, iterations=int(round(width / 2)))
    return mask


def apply_defect(scene: Scene, kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """Change `scene` in place; returns the ground-truth mask (the pixels the defect changed)."""
    scale = size / 224.0  # defect sizes are given in pixels at 224, with a floor for tiny images
    on_object = scene.coverage > 0.5
    if kind in ("dent", "bump"):
        radius = max(3.0, rng.uniform(7.0, 13.0) * scale)
        centre = _pick_point(_interior(scene, radius * 0.6), rng)
        profile = np.clip(1.0 - (_radius_field(size, centre) / radius) ** 2, 0.0, 1.0) ** 2
        amplitude = rng.uniform(0.002, 0.0035) * (1 if kind == "bump" else -1)
        relief = amplitude * profile * scene.coverage
        scene.height += relief
        scene.hidden_relief += 0.85 * relief  # a shallow, smooth deformation: the camera barely sees it
        return (profile >= 0.1) & on_object
    if kind == "contamination":
        radius = max(2.5, rng.uniform(5.0, 10.0) * scale)
        centre = _pick_point(_interior(scene, radius), rng)
        wobble = smooth_noise(rng, size, max(8, size // 6))
        blob = (_radius_field(size, centre) / radius + 0.25 * wobble) < 1.0
        blob &= _radius_field(size, centre) < 2 * radius
        mask = blob & on_object
        stains = np.array(
            [[0.25, 0.17, 0.10], [0.92, 0.90, 0.86], [0.62, 0.30, 0.12], [0.20, 0.25, 0.55]], np.float32
        )
        stain = stains[rng.integers(len(stains))]
        alpha = rng.uniform(0.4, 0.65)
        scene.albedo[mask] = (1 - alpha) * scene.albedo[mask] + alpha * stain
        return mask
    if kind == "crack":
        length = max(8.0, rng.uniform(16.0, 28.0) * scale)
        start = _pick_point(_interior(scene, length / 2), rng)
        mask = _crack_path(size, start, length, max(1.0, 2.0 * scale), rng) & on_object
        scene.height[mask] -= rng.uniform(0.001, 0.002)
        scene.albedo[mask] *= rng.uniform(0.4, 0.6)
        return mask
    if kind == "hole":
        radius = max(1.5, rng.uniform(3.0, 5.5) * scale)
        centre = _pick_point(_interior(scene, radius + 2), rng)
        mask = (_radius_field(size, centre) <= radius) & on_object
        scene.height[mask] = 0.0  # through the part: the camera sees the table at the bottom
        scene.albedo[mask] = scene.table_albedo[mask] * 0.35  # in the shadow of the walls
        return mask
    if kind == "cut":
        radius = max(3.0, rng.uniform(6.0, 10.0) * scale)
        edge = (scene.coverage > 0.3) & (scene.coverage < 0.7)
        centre = _pick_point(edge, rng)
        notch = np.clip(_radius_field(size, centre) - radius + 0.5, 0.0, 1.0)  # antialiased disc
        mask = on_object & (notch < 0.5)
        scene.coverage *= notch
        scene.height *= notch
        return mask
    raise InputError(f"unknown defect kind {kind!r}; expected one of {', '.join(DEFECTS)}")


# --------------------------------------------------------------------------------------- rendering


def _gradient(field: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gy, gx = np.gradient(field)
    return gx, gy


def _shifted(field: np.ndarray, dv: int, du: int) -> np.ndarray:
    out = np.zeros_like(field)
    h, w = field.shape
    out[max(dv, 0) : h + min(dv, 0), max(du, 0) : w + min(du, 0)] = field[
        max(-dv, 0) : h + min(-dv, 0), max(-du, 0) : w + min(-du, 0)
    ]
    return out


def render_image(
    object_name: str, size: int, seed: int, split: str, index: int, defect: str | None = None
) -> SyntheticImage:
    """One RGB + xyz capture of `object_name`; with `defect`, the same capture with that defect.

    Steps, in the order they draw random numbers (changing it changes every image): the part's pose
    and surface, the capture conditions (drawn before the defect, so a defective image is its normal
    twin plus the defect), the defect, then geometry, shading and the sensor's dropouts."""
    kind, variant = _base_type(object_name)
    style = OBJECTS[kind]
    rng = image_rng(seed, object_name, split, index, "normal")
    station = station_for(seed, object_name, size)
    grid = _pose_grid(rng, size)
    scene = _scene(kind, variant, style, station, grid, rng, size)
    capture = _capture(station, rng, size)
    gt = np.zeros((size, size), bool)
    if defect is not None:
        gt = apply_defect(scene, defect, image_rng(seed, object_name, split, index, "defect"), size)
    z, focal, pixel_metres = _depth(scene, capture, grid, size)
    rgb, albedo, specular = _shade(scene, capture, style, pixel_metres, size)
    invalid = _dropouts(scene, capture, station, style, albedo, specular, pixel_metres)
    z = z + capture.depth_noise
    u, v, centre = grid.u, grid.v, grid.centre
    xyz = np.stack([(u - centre) * z / focal, (v - centre) * z / focal, z], axis=-1).astype(np.float32)
    xyz[invalid] = 0.0
    return SyntheticImage(rgb=rgb, xyz=xyz, gt=gt)


@dataclass(frozen=True)
class _PoseGrid:
    """Pixel coordinates (u, v) and the part's own coordinates (p, q) at each pixel."""

    u: np.ndarray
    v: np.ndarray
    p: np.ndarray
    q: np.ndarray
    centre: float
    zoom: float
    proportions: np.ndarray


def _pose_grid(rng: np.random.Generator, size: int) -> _PoseGrid:
    """A random pose: rotation, shift, zoom and proportions."""
    angle = rng.uniform(0, 2 * np.pi)
    shift = rng.normal(0.0, 0.035, 2) * size
    zoom = rng.uniform(0.96, 1.04)
    proportions = rng.uniform(0.95, 1.05, 2)
    centre = (size - 1) / 2.0
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    du, dv = (u - centre - shift[0]) / (size * zoom), (v - centre - shift[1]) / (size * zoom)
    du, dv = du / OBJECT_SCALE, dv / OBJECT_SCALE
    p = np.cos(angle) * du + np.sin(angle) * dv
    q = -np.sin(angle) * du + np.cos(angle) * dv
    return _PoseGrid(u, v, p, q, centre, zoom, proportions)


def _scene(
    kind: str,
    variant: int,
    style: ObjectStyle,
    station: Station,
    grid: _PoseGrid,
    rng: np.random.Generator,
    size: int,
) -> Scene:
    """The part's height field, coverage and surface, and the table's surface."""
    distance, top = SHAPES[kind](grid.p, grid.q, grid.proportions)
    coverage = np.clip(distance * size * grid.zoom * OBJECT_SCALE + 0.5, 0.0, 1.0).astype(np.float32)
    rounding = smoothstep(distance / style.bevel) if style.bevel > 0 else (distance > 0).astype(np.float32)
    height_scale = style.height * rng.uniform(0.96, 1.04)
    height = (height_scale * rounding * top * coverage).astype(np.float32)
    height += (0.00015 * smooth_noise(rng, size, 10) * coverage).astype(np.float32)  # surface waviness
    return Scene(
        height=height,
        coverage=coverage,
        albedo=_surface_albedo(kind, style, grid.p, grid.q, rng, size, variant).astype(np.float32),
        table_albedo=_table_albedo(station, rng, size).astype(np.float32),
        hidden_relief=np.zeros((size, size), np.float32),
    )


@dataclass(frozen=True)
class _Capture:
    """One capture's conditions: light, exposure, the table's pose and the sensor's noise."""

    light: np.ndarray
    ambient: float
    exposure: float
    white_balance: np.ndarray
    table_z: float
    tilt: np.ndarray
    rgb_noise: np.ndarray
    depth_noise: np.ndarray
    dropout_noise: np.ndarray
    speckle_noise: np.ndarray
    background_dropout: float
    edge_threshold: float
    edge_keep: float
    edge_pick: np.ndarray
    projector_shift: int


def _capture(station: Station, rng: np.random.Generator, size: int) -> _Capture:
    light = np.array(
        [station.light[0] + rng.normal(0.0, 0.04), station.light[1] + rng.normal(0.0, 0.04), 1.0]
    )
    light /= np.linalg.norm(light)
    exposure = rng.uniform(0.96, 1.04)
    white_balance = rng.uniform(0.99, 1.01, 3).astype(np.float32)
    table_z = station.table_z + rng.normal(0.0, 0.0005)
    tilt = np.array(station.tilt) + rng.normal(0.0, 0.0003, 2)
    rgb_noise = rng.normal(0.0, 0.012, (size, size, 3)).astype(np.float32)
    depth_noise = rng.normal(0.0, 0.00012, (size, size)).astype(np.float32) + 0.00015 * smooth_noise(
        rng, size, 6
    )
    dropout_noise = smooth_noise(rng, size, max(6, size // 16))
    speckle_noise = smooth_noise(rng, size, max(8, size // 6))
    background_dropout = rng.uniform(0.0, 0.03)
    edge_threshold, edge_keep = rng.uniform(0.8, 1.6), rng.uniform(0.6, 0.95)
    edge_pick = rng.random((size, size))
    projector_shift = max(1, int(round(rng.uniform(2.0, 5.0) * size / 224.0)))
    return _Capture(
        light,
        station.ambient,
        exposure,
        white_balance,
        table_z,
        tilt,
        rgb_noise,
        depth_noise,
        dropout_noise,
        speckle_noise,
        background_dropout,
        edge_threshold,
        edge_keep,
        edge_pick,
        projector_shift,
    )


def _depth(scene: Scene, capture: _Capture, grid: _PoseGrid, size: int) -> tuple[np.ndarray, float, float]:
    """Table plane minus the part's height -> (z, focal length in px, metres per pixel on the table)."""
    focal = size * TABLE_Z / FIELD_OF_VIEW
    centre = grid.centre
    tilt = capture.tilt
    z_table = capture.table_z + tilt[0] * (grid.u - centre) / size + tilt[1] * (grid.v - centre) / size
    z = (z_table - scene.height).astype(np.float32)
    return z, focal, capture.table_z / focal


def _shade(
    scene: Scene, capture: _Capture, style: ObjectStyle, pixel_metres: float, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lambert + a little specular, the part's cast shadow on the table -> (rgb, albedo, specular)."""
    scale = size / 224.0
    light = capture.light
    gx, gy = _gradient((scene.height - scene.hidden_relief) / pixel_metres)
    normal = np.stack([-gx, -gy, np.ones_like(gx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    lambert = np.clip(normal @ light.astype(np.float32), 0.0, 1.0)
    half_vector = (light + np.array([0.0, 0.0, 1.0])) / np.linalg.norm(light + np.array([0.0, 0.0, 1.0]))
    specular = style.shine * np.clip(normal @ half_vector.astype(np.float32), 0.0, 1.0) ** 40
    reach = style.height / pixel_metres * 0.6
    shadow = _shifted(scene.coverage, int(round(-light[1] * reach)), int(round(-light[0] * reach)))
    shadow = ndimage.gaussian_filter(shadow, 2.0 * scale) * (1.0 - scene.coverage)
    ambient = capture.ambient
    shade = ambient + (1.0 - ambient) * lambert * (1.0 - 0.45 * shadow)
    albedo = scene.coverage[..., None] * scene.albedo + (1 - scene.coverage[..., None]) * scene.table_albedo
    linear = (albedo * shade[..., None] + specular[..., None]) * capture.exposure * capture.white_balance
    linear = ndimage.gaussian_filter(linear, sigma=(0.5 * scale, 0.5 * scale, 0)) + capture.rgb_noise
    rgb = (np.clip(linear, 0.0, 1.0) ** (1 / 1.4) * 255.0 + 0.5).astype(np.uint8)
    return rgb, albedo, specular


def _dropouts(
    scene: Scene,
    capture: _Capture,
    station: Station,
    style: ObjectStyle,
    albedo: np.ndarray,
    specular: np.ndarray,
    pixel_metres: float,
) -> np.ndarray:
    """Where a structured-light sensor measures nothing: steep walls, the projector's shadow beside
    raised parts, dark or shiny patches, random blobs on the table."""
    sx, sy = _gradient(scene.height / pixel_metres)
    steep = (np.hypot(sx, sy) > capture.edge_threshold) & (capture.edge_pick < capture.edge_keep)
    raised = scene.height > 0.25 * style.height
    projector_shadow = _shifted(raised.astype(np.float32), 0, capture.projector_shift) > 0.5
    projector_shadow &= ~raised
    on_table = scene.coverage < 0.5
    fixed = station.unmeasurable > np.quantile(station.unmeasurable, 1.0 - station.unmeasurable_fraction)
    blobs = capture.dropout_noise > np.quantile(capture.dropout_noise, 1.0 - capture.background_dropout)
    table_blobs = on_table & (fixed | blobs)
    dark = (albedo.mean(axis=-1) < 0.16) & (capture.speckle_noise > 1.5)
    return steep | projector_shadow | table_blobs | dark | (specular > 0.25)


# ------------------------------------------------------------------------------------------- writing


def defect_plan(n_test: int) -> list[str]:
    """Defect kind ('good' or one of DEFECTS) of each test index: half good, the rest cycling kinds."""
    n_good = (n_test + 1) // 2
    return ["good"] * n_good + [DEFECTS[i % len(DEFECTS)] for i in range(n_test - n_good)]


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG", compress_level=3)


def _write_image(folder: Path, stem: str, image: SyntheticImage, with_gt: bool) -> None:
    _write_png(folder / "rgb" / f"{stem}.png", image.rgb)
    (folder / "xyz").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        folder / "xyz" / f"{stem}.tiff", image.xyz, photometric="minisblack", planarconfig="contig"
    )
    if with_gt:
        _write_png(folder / "gt" / f"{stem}.png", image.gt.astype(np.uint8) * 255)


def write_synthetic_dataset(
    out: Path,
    objects: int = 10,
    size: int = 224,
    n_train: int = 200,
    n_validation: int = 20,
    n_test: int = 40,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write the benchmark under `out` in the MVTec 3D-AD layout; returns the object names."""
    if size < 32:
        raise InputError(f"synthetic images need at least 32 px, got {size}")
    if min(n_train, n_validation, n_test) < 0 or n_train == 0:
        raise InputError("need at least one training image and no negative counts")
    out = Path(out)
    names = object_names(objects)
    total = len(names) * (n_train + n_validation + n_test)
    done = 0
    for name in names:
        for split, count in (("train", n_train), ("validation", n_validation)):
            for index in range(count):
                image = render_image(name, size, seed, split, index)
                _write_image(out / name / split / "good", f"{index:03d}", image, with_gt=False)
                done += 1
                if progress is not None:
                    progress(done, total)
        per_kind: dict[str, int] = {}
        for index, kind in enumerate(defect_plan(n_test)):
            image = render_image(name, size, seed, "test", index, None if kind == "good" else kind)
            number = per_kind[kind] = per_kind.get(kind, -1) + 1
            _write_image(out / name / "test" / kind, f"{number:03d}", image, with_gt=True)
            done += 1
            if progress is not None:
                progress(done, total)
    return names


# ---------------------------------------------------------------------------------------- picture


def _depth_picture(xyz: np.ndarray) -> np.ndarray:
    """Nearer = brighter grey, lit from the top left so millimetre dents and bumps show; missing = dark blue."""
    z = np.where(np.all(xyz == 0, axis=-1), np.nan, xyz[..., 2])
    valid = np.isfinite(z)
    if not valid.any():
        return np.zeros((*z.shape, 3), np.uint8)
    low, high = np.percentile(z[valid], [1, 99])
    indices = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    filled = ndimage.gaussian_filter(z[tuple(indices)], 1.0)
    pitch = float(np.median(z[valid])) * FIELD_OF_VIEW / TABLE_Z / z.shape[1]  # metres per pixel
    slope_v, slope_u = np.gradient(filled / pitch)
    relief = np.clip(1.0 + 2.5 * (slope_u + slope_v), 0.4, 1.6)  # surfaces facing the light brighten
    grey = 0.15 + 0.7 * np.clip((high - filled) / max(high - low, 1e-6), 0, 1)
    picture = np.repeat((np.clip(grey * relief, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    picture[~valid] = (20, 30, 90)
    return picture


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def render_sample_grid(root: Path, out_png: Path, tile: int = 128) -> Path:
    """A picture of the benchmark: one row per object, columns good + each defect kind; each cell
    shows RGB, depth, and RGB with the ground truth outlined in red."""
    root, out_png = Path(root), Path(out_png)
    objects = sorted(p.name for p in root.iterdir() if (p / "test").is_dir())
    columns = ["good", *DEFECTS]
    label_height, label_width, gap = 18, 70, 6
    cell_width = 3 * tile + gap
    canvas = Image.new(
        "RGB",
        (label_width + len(columns) * cell_width, label_height + len(objects) * (tile + gap)),
        (255, 255, 255),
    )
    draw = ImageDraw.Draw(canvas)
    for column, kind in enumerate(columns):
        draw.text((label_width + column * cell_width + 4, 3), f"{kind}: rgb | depth | gt", fill=(0, 0, 0))
    for row, name in enumerate(objects):
        top = label_height + row * (tile + gap)
        draw.text((4, top + tile // 2), name, fill=(0, 0, 0))
        for column, kind in enumerate(columns):
            folder = root / name / "test" / kind
            stems = (
                sorted(p.stem for p in (folder / "rgb").glob("*.png")) if (folder / "rgb").is_dir() else []
            )
            if not stems:
                continue
            rgb = np.asarray(Image.open(folder / "rgb" / f"{stems[0]}.png").convert("RGB"))
            xyz = tifffile.imread(folder / "xyz" / f"{stems[0]}.tiff")
            gt = np.asarray(Image.open(folder / "gt" / f"{stems[0]}.png")) > 0
            marked = rgb.copy()
            marked[_outline(ndimage.binary_dilation(gt, iterations=2))] = (255, 0, 0)
            for panel, picture in enumerate((rgb, _depth_picture(xyz), marked)):
                image = Image.fromarray(picture).resize((tile, tile), Image.NEAREST)
                canvas.paste(image, (label_width + column * cell_width + panel * tile, top))
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the picture small enough for the docs (sensor noise defeats PNG compression).
    canvas.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(out_png, optimize=True)
    return out_png
