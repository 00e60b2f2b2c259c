"""One dataset item (paths only) and its loaded arrays; the common currency of readers, training and eval."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.data.decode import check_same_size, read_depth, read_mask, read_rgb
from model.data.depth import resize_valid
from model.errors import InputError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """Where one RGB(+depth, +mask) item lives; cheap to list, loaded only when needed."""

    object: str
    split: str
    defect: str  # "good" for normal items
    rgb_path: Path
    depth_path: Path | None
    gt_path: Path | None
    depth_range: tuple[float, float] | None = None  # Eyecandies 16-bit PNG -> metres

    @property
    def is_anomalous(self) -> bool:
        return self.defect != GOOD

    @property
    def mask_known(self) -> bool:
        """A normal item's mask is known to be empty; a defective one's only when it has a file."""
        return not self.is_anomalous or self.gt_path is not None

    @property
    def name(self) -> str:
        """Short id for messages and result files: object/split/defect/stem."""
        return f"{self.object}/{self.split}/{self.defect}/{self.rgb_path.stem}"


@dataclass(frozen=True)
class LoadedSample:
    sample: Sample
    rgb: np.ndarray  # uint8 HxWx3
    depth: np.ndarray | None  # float32 HxW, NaN = invalid
    gt: np.ndarray | None  # bool HxW; all False for good test items; None for train and unknown masks


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8 HxWx3 -> uint8 size x size x 3 with the same antialiased filter as `prepare_rgb`."""
    if rgb.shape[:2] == (size, size):
        return rgb
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return image[0].permute(1, 2, 0).contiguous().numpy()


def resize_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """Validity-weighted resize (as in `prepare_depth`); cells with no valid support stay NaN."""
    resized, valid = resize_valid(depth, size)
    resized[~valid] = np.nan
    return resized


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool HxW -> bool size x size: area average, then >= 0.5.

    The one rule for ground truth at network resolution: a cell is anomalous when at least half of
    it is. Thin defects may vanish at low resolution; that is the price of scoring at that size.
    """
    if mask.shape == (size, size):
        return mask.astype(bool)
    area = F.interpolate(
        torch.from_numpy(mask.astype(np.float32))[None, None], size=(size, size), mode="area"
    )
    return area[0, 0].numpy() >= 0.5


def load_sample(sample: Sample, size: int | None = None) -> LoadedSample:
    """Decode one item; with `size`, every array is resized to size x size (rgb, depth, gt alike).

    Raises InputError naming the file for unreadable files, RGB/depth/mask size mismatches.
    """
    rgb = read_rgb(sample.rgb_path)
    depth = None
    if sample.depth_path is not None:
        depth = read_depth(sample.depth_path, depth_range=sample.depth_range)
        check_same_size(rgb, depth, f"{sample.rgb_path} / {sample.depth_path.name}")
    gt = None
    if sample.gt_path is not None:
        gt = read_mask(sample.gt_path)
        if gt.shape != rgb.shape[:2]:
            raise InputError(
                f"{sample.gt_path}: mask is {gt.shape[1]}x{gt.shape[0]} but the image "
                f"is {rgb.shape[1]}x{rgb.shape[0]}"
            )
    elif sample.split == "test" and not sample.is_anomalous:
        gt = np.zeros(rgb.shape[:2], dtype=bool)
    if size is not None:
        rgb = resize_rgb(rgb, size)
        depth = None if depth is None else resize_depth(depth, size)
        gt = None if gt is None else resize_mask(gt, size)
    return LoadedSample(sample=sample, rgb=rgb, depth=depth, gt=gt)


def pixel_truth(samples: Iterable[Sample], size: int) -> np.ndarray | None:
    """(N, size, size) bool ground truth at network resolution, or None when any defective item has
    no mask (an object with image labels only: its pixel metrics are not available, never 0)."""
    samples = list(samples)
    if not all(sample.mask_known for sample in samples):
        return None
    return np.stack(
        [
            resize_mask(read_mask(s.gt_path), size) if s.gt_path is not None else np.zeros((size, size), bool)
            for s in samples
        ]
    )


def report_problem(message: str, skip_bad: bool, problems: list[str] | None) -> None:
    """Raise for a bad item, or (skip_bad) log it and add it to `problems` so callers can count it."""
    if not skip_bad:
        raise InputError(message)
    logger.warning("skipping: %s", message)
    if problems is not None:
        problems.append(message)


def load_samples(
    samples: Iterable[Sample],
    size: int | None = None,
    skip_bad: bool = False,
    problems: list[str] | None = None,
) -> list[LoadedSample]:
    """Load many items; with skip_bad, unreadable or inconsistent ones are dropped and reported."""
    loaded = []
    for sample in samples:
        try:
            loaded.append(load_sample(sample, size))
        except InputError as error:
            report_problem(str(error), skip_bad, problems)
    return loaded


SampleSource = Callable[[], tuple[np.ndarray, np.ndarray | None]]
"""A zero-argument loader of one normal sample's (rgb, depth): what training takes."""


def sample_source(sample: Sample) -> SampleSource:
    """`sample` as a lazy training source: its files are read only when called."""

    def load() -> tuple[np.ndarray, np.ndarray | None]:
        loaded = load_sample(sample)
        return loaded.rgb, loaded.depth

    return load
