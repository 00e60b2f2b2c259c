"""The single entry point to datasets on disk: which layout, which objects, which items."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from model.data import eyecandies, mvtec3d
from model.data.samples import SPLITS, Sample
from model.errors import InputError

Layout = Literal["mvtec3d", "eyecandies"]
Split = Literal["train", "validation", "test"]


def detect_layout(root: Path | str) -> Layout:
    """ "mvtec3d" (also what `iumad synth` writes) or "eyecandies", from the folder structure."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a directory")
    if mvtec3d.is_layout(root):
        return "mvtec3d"
    if eyecandies.is_layout(root):
        return "eyecandies"
    raise InputError(
        f"{root} is neither an MVTec 3D-AD layout (<root>/<object>/train/good/rgb) nor an "
        f"Eyecandies layout (<root>/<Category>/train/data)"
    )


def list_objects(root: Path | str) -> list[str]:
    """Object (category) names under root, alphabetical."""
    root = Path(root)
    reader = mvtec3d if detect_layout(root) == "mvtec3d" else eyecandies
    return reader.list_objects(root)


def list_samples(
    root: Path | str,
    object: str,
    split: Split,
    skip_bad: bool = False,
    problems: list[str] | None = None,
    eyecandies_image: int = eyecandies.DEFAULT_IMAGE,
    allow_empty: bool = False,
) -> list[Sample]:
    """Items of one object and split.

    Bad items (an RGB file without depth, an anomalous test image without mask, an unreadable
    Eyecandies mask or yaml) raise InputError naming the file; with `skip_bad=True` they are left
    out, logged, and their messages appended to `problems` when a list is given, so callers can
    count them. An unknown object is always an error, an empty split too unless `allow_empty` (an
    optional split, such as the validation images an object may not have). Files are only decoded
    when loaded (`load_sample`), where unreadable images and size mismatches surface.
    """
    root = Path(root)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    layout = detect_layout(root)
    reader = mvtec3d if layout == "mvtec3d" else eyecandies
    known = reader.list_objects(root)
    if object not in known:
        raise InputError(f"unknown object {object!r} in {root}; known objects: {', '.join(known)}")
    if layout == "eyecandies":
        samples = eyecandies.list_samples(
            root, object, split, skip_bad, problems, image_index=eyecandies_image
        )
    else:
        samples = mvtec3d.list_samples(root, object, split, skip_bad, problems)
    if not samples and not allow_empty:
        raise InputError(f"{root / object}: the {split} split has no usable samples")
    return samples
