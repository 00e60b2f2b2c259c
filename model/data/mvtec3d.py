"""MVTec 3D-AD layout reader (also the layout `iumad synth` writes).

<root>/<object>/{train,validation}/good/{rgb/NNN.png, xyz/NNN.tiff}
<root>/<object>/test/<defect or good>/{rgb/NNN.png, xyz/NNN.tiff, gt/NNN.png}

An object without any `xyz` folder is RGB-only (a station without a depth camera): its samples have
no depth. An object with depth must have it for every image: a missing depth file is an error.
An object without any `gt` file among its defective test images has image labels only (as much
of users' own data does): it is scored at image level, and its pixel metrics are not available.
An object with masks must have one for every defective test image: a missing mask is an error.
"""

from __future__ import annotations

from pathlib import Path

from model.data.samples import GOOD, Sample, report_problem

RGB_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEPTH_SUFFIXES = (".tiff", ".tif", ".npy", ".png")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def is_object_dir(path: Path) -> bool:
    return path.is_dir() and any((path / split / GOOD / "rgb").is_dir() for split in ("train", "test"))


def is_layout(root: Path) -> bool:
    return root.is_dir() and any(is_object_dir(child) for child in root.iterdir())


def list_objects(root: Path) -> list[str]:
    return sorted(child.name for child in root.iterdir() if is_object_dir(child))


def files_by_stem(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """stem -> file for visible files with a known suffix; with two candidates, the earlier suffix wins."""
    if not folder.is_dir():
        return {}
    candidates = [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    ]
    found: dict[str, Path] = {}
    for path in sorted(candidates, key=lambda p: (p.stem, suffixes.index(p.suffix.lower()))):
        found.setdefault(path.stem, path)
    return found


def has_depth(object_dir: Path) -> bool:
    """Whether the object was captured with depth: any of its split/kind folders has an `xyz` folder."""
    return any(path.is_dir() for path in object_dir.glob("*/*/xyz"))


def list_defect_samples(
    object_dir: Path,
    split: str,
    defect: str,
    skip_bad: bool,
    problems: list[str] | None,
    with_depth: bool = True,
    with_masks: bool = True,
) -> list[Sample]:
    base = object_dir / split / defect
    depths = files_by_stem(base / "xyz", DEPTH_SUFFIXES)
    masks = files_by_stem(base / "gt", MASK_SUFFIXES)
    samples = []
    for stem, rgb_path in sorted(files_by_stem(base / "rgb", RGB_SUFFIXES).items()):
        depth_path = depths.get(stem)
        if depth_path is None and with_depth:
            report_problem(f"{rgb_path}: no depth file {base / 'xyz' / stem}.tiff", skip_bad, problems)
            continue
        gt_path = masks.get(stem) if split == "test" else None
        if split == "test" and defect != GOOD and gt_path is None and with_masks:
            report_problem(
                f"{rgb_path}: anomalous test image without a mask in {base / 'gt'} (other defective "
                f"test images of {object_dir.name} have masks: give every one a mask, or none of them "
                f"for image-level scoring only)",
                skip_bad,
                problems,
            )
            continue
        samples.append(
            Sample(
                object=object_dir.name,
                split=split,
                defect=defect,
                rgb_path=rgb_path,
                depth_path=depth_path,
                gt_path=gt_path,
            )
        )
    return samples


def has_masks(object_dir: Path) -> bool:
    """Whether the object's defective test images come with ground-truth masks (any one of them)."""
    return any(
        files_by_stem(folder, MASK_SUFFIXES)
        for folder in object_dir.glob("test/*/gt")
        if folder.parent.name != GOOD
    )


def list_samples(
    root: Path, object_name: str, split: str, skip_bad: bool = False, problems: list[str] | None = None
) -> list[Sample]:
    """Items of one object and split ("train", "validation", "test"), sorted by defect then file stem."""
    object_dir = root / object_name
    if split == "test":
        folder = object_dir / "test"
        defects = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        defects = [GOOD] * (GOOD in defects) + [d for d in defects if d != GOOD]
    else:
        defects = [GOOD]
    with_depth, with_masks = has_depth(object_dir), has_masks(object_dir)
    samples: list[Sample] = []
    for defect in defects:
        samples += list_defect_samples(object_dir, split, defect, skip_bad, problems, with_depth, with_masks)
    return samples
