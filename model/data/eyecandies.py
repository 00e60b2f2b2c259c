"""Eyecandies layout reader.

    <root>/<Category>/{train,val,test_public}/data/NNN_image_{0..5}.png   (RGB, 6 lighting conditions)
                                                  NNN_depth.png           (16-bit, normalised)
                                                  NNN_info_depth.yaml     (normalization: {min, max})
                                                  NNN_mask.png            (test_public only)

Splits map as train -> train, val -> validation, test_public -> test (test_private has no masks and
is not read). Test items are "bad" when their mask has any positive pixel, else "good".
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from model.data.decode import read_mask
from model.data.samples import GOOD, Sample, report_problem
from model.errors import InputError

SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test_public"}
DEFAULT_IMAGE = 0  # image_0: all spotlights on
BAD = "bad"


def is_object_dir(path: Path) -> bool:
    return path.is_dir() and any((path / folder / "data").is_dir() for folder in SPLIT_FOLDERS.values())


def is_layout(root: Path) -> bool:
    return root.is_dir() and any(is_object_dir(child) for child in root.iterdir())


def list_objects(root: Path) -> list[str]:
    return sorted(child.name for child in root.iterdir() if is_object_dir(child))


def read_depth_range(path: Path) -> tuple[float, float]:
    """(min, max) in metres from NNN_info_depth.yaml (`normalization: {min, max}`; `min_depth`/`max_depth`
    are accepted too)."""
    try:
        info = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise InputError(f"{path}: cannot read depth normalisation ({error})") from error
    if isinstance(info, dict) and isinstance(info.get("normalization"), dict):
        bounds = info["normalization"].get("min"), info["normalization"].get("max")
    elif isinstance(info, dict):
        bounds = info.get("min_depth"), info.get("max_depth")
    else:
        bounds = None, None
    try:
        low, high = float(bounds[0]), float(bounds[1])
    except (TypeError, ValueError) as error:
        raise InputError(f"{path}: expected 'normalization: {{min, max}}' numbers, got {info!r}") from error
    if not high > low:
        raise InputError(f"{path}: depth normalisation min {low} is not below max {high}")
    return low, high


def list_samples(
    root: Path,
    object_name: str,
    split: str,
    skip_bad: bool = False,
    problems: list[str] | None = None,
    image_index: int = DEFAULT_IMAGE,
) -> list[Sample]:
    """Items of one category and split, sorted by id; test items are labelled by reading their masks."""
    data = root / object_name / SPLIT_FOLDERS[split] / "data"
    if not data.is_dir():
        return []
    pattern = re.compile(rf"(\d+)_image_{image_index}\.png")
    samples = []
    for rgb_path in sorted(data.iterdir()):
        match = pattern.fullmatch(rgb_path.name)
        if match is None:
            continue
        stem = match.group(1)
        depth_path, info_path = data / f"{stem}_depth.png", data / f"{stem}_info_depth.yaml"
        mask_path = data / f"{stem}_mask.png"
        if not depth_path.is_file():
            report_problem(f"{rgb_path}: no depth file {depth_path.name}", skip_bad, problems)
            continue
        try:
            depth_range = read_depth_range(info_path) if info_path.is_file() else None
            if depth_range is None:
                raise InputError(f"{rgb_path}: no depth normalisation file {info_path.name}")
            defect, gt_path = GOOD, None
            if split == "test":
                if not mask_path.is_file():
                    raise InputError(f"{rgb_path}: test item without a mask {mask_path.name}")
                defect, gt_path = (BAD if read_mask(mask_path).any() else GOOD), mask_path
        except InputError as error:
            report_problem(str(error), skip_bad, problems)
            continue
        samples.append(
            Sample(
                object=object_name,
                split=split,
                defect=defect,
                rgb_path=rgb_path,
                depth_path=depth_path,
                gt_path=gt_path,
                depth_range=depth_range,
            )
        )
    return samples
