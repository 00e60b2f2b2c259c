"""Pairing an upload's files into RGB + depth samples, and checking that every pair decodes.

Pairs are found by layout (MVTec 3D-AD `rgb/` + `xyz/` folders, or files paired by stem); every pair
is decoded and size-checked, and every file that does not fit is reported with its reason, so that
the operator can fix all of them at once.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from model.data.decode import check_same_size, read_depth, read_rgb
from model.errors import InputError, IumadError
from store.samples import SamplePair

RGB_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
DEPTH_SUFFIXES = {".tif", ".tiff", ".npy"}
MAX_REJECTS_SHOWN = 200  # of the rejected files an answer lists (the message counts them all)


class SamplesRejectedError(InputError):
    """Some files do not form valid pairs; `rejects` says which and why, so the operator can fix them."""

    code = "invalid_samples"

    def __init__(self, message: str, rejects: list[RejectedFile]) -> None:
        super().__init__(message)
        self.rejects = rejects
        self.details = [{"file": r.name, "reason": r.reason} for r in rejects[:MAX_REJECTS_SHOWN]]

    def __reduce__(self) -> tuple[type, tuple[str, list[RejectedFile]]]:
        """Crosses from the ingest process to the gateway whole (the default drops `rejects`)."""
        return (type(self), (str(self), self.rejects))


@dataclass(frozen=True)
class RejectedFile:
    name: str
    reason: str


def _role_and_stem(path: PurePosixPath) -> tuple[str, tuple[str, ...], str] | None:
    """('rgb' | 'depth', group folder, stem) for a sample file; None for files that are not samples."""
    suffix = path.suffix.lower()
    parents = path.parts[:-1]
    folder = parents[-1].lower() if parents else ""
    if folder == "gt":
        return None  # ground-truth masks of test images
    if folder in ("rgb", "xyz"):  # MVTec 3D-AD: <group>/rgb/NNN.png + <group>/xyz/NNN.tiff
        group = parents[:-1]
        if "test" in (part.lower() for part in group) and group and group[-1].lower() != "good":
            return None  # a defective test sample; enrolment takes normal parts only
        if folder == "rgb" and suffix in RGB_SUFFIXES:
            return "rgb", group, path.stem
        if folder == "xyz" and (suffix in DEPTH_SUFFIXES or suffix == ".png"):
            return "depth", group, path.stem
        return None
    stem = path.stem
    if suffix == ".png" and stem.lower().endswith("_depth"):
        return "depth", parents, stem[: -len("_depth")]
    if suffix in DEPTH_SUFFIXES:
        return "depth", parents, stem
    if suffix in RGB_SUFFIXES:
        return "rgb", parents, stem[: -len("_rgb")] if stem.lower().endswith("_rgb") else stem
    return None


def find_pairs(root: Path, files: list[Path]) -> tuple[list[SamplePair], list[RejectedFile], list[str]]:
    """Pair RGB and depth files by folder and stem -> (pairs, rejects, skipped file names)."""
    by_key: dict[tuple[tuple[str, ...], str], dict[str, Path]] = {}
    rejects: list[RejectedFile] = []
    skipped: list[str] = []
    for path in sorted(files):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        found = _role_and_stem(relative)
        if found is None:
            skipped.append(str(relative))
            continue
        role, group, stem = found
        slot = by_key.setdefault((group, stem), {})
        if role in slot:
            rejects.append(RejectedFile(str(relative), f"a second {role} file for sample {stem!r}"))
            continue
        slot[role] = path
    any_depth = any("depth" in slot for slot in by_key.values())
    pairs = []
    for (group, stem), slot in sorted(by_key.items()):
        key = "/".join((*group, stem))
        if "rgb" not in slot:
            rejects.append(
                RejectedFile(slot["depth"].relative_to(root).as_posix(), "depth file without an RGB image")
            )
        elif any_depth and "depth" not in slot:
            rejects.append(
                RejectedFile(
                    slot["rgb"].relative_to(root).as_posix(),
                    "RGB image without a depth file (the other samples have depth)",
                )
            )
        else:
            pairs.append(SamplePair(key=key, rgb=slot["rgb"], depth=slot.get("depth")))
    return pairs, rejects, skipped


def _pair_size(pair: SamplePair, max_pixels: int, max_depth_bytes: int) -> tuple[int, int]:
    rgb = read_rgb(pair.rgb, max_pixels=max_pixels)
    depth = None
    if pair.depth is not None:
        depth = read_depth(pair.depth, max_pixels=max_pixels, max_bytes=max_depth_bytes)
    check_same_size(rgb, depth, pair.key)
    return int(rgb.shape[1]), int(rgb.shape[0])


def validate_pairs(
    pairs: list[SamplePair], root: Path, max_pixels: int, max_depth_bytes: int, workers: int = 2
) -> tuple[tuple[int, int] | None, list[RejectedFile]]:
    """Decode every pair; all must be readable and of one size -> (width, height), rejects."""

    def check(pair: SamplePair) -> tuple[int, int] | RejectedFile:
        try:
            return _pair_size(pair, max_pixels, max_depth_bytes)
        except IumadError as error:
            return RejectedFile(pair.key, str(error).replace(str(root) + os.sep, ""))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, pairs))
    rejects = [result for result in results if isinstance(result, RejectedFile)]
    sizes = [result for result in results if not isinstance(result, RejectedFile)]
    if not sizes:
        return None, rejects
    common, _ = Counter(sizes).most_common(1)[0]
    for pair, result in zip(pairs, results, strict=True):
        if not isinstance(result, RejectedFile) and result != common:
            rejects.append(
                RejectedFile(
                    pair.key,
                    f"image is {result[0]}x{result[1]} but the other samples are "
                    f"{common[0]}x{common[1]}; one enrolment needs one image size",
                )
            )
    return common, rejects
