"""Enrolment samples: safe archive extraction, pairing, validation, and durable storage on disk.

An enrolment arrives as a folder of uploaded files or as one archive (`.zip`, `.tar`, `.tar.gz`).
Archives are extracted member by member with every limit checked before and while bytes are written:
no path leaves the extraction folder, no links, and the member count, total size and compression
ratio stay under the configured limits (zip bombs). Pairs are found by layout, every pair is decoded
and size-checked, and only a fully valid enrolment is stored, under
`samples_dir/<object>/<enrolment id>/{train,holdout}/{rgb,depth}/`, fsynced and renamed into place
in one step, so a job never sees half an enrolment.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tarfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import numpy as np

from iumad.names import is_object_name
from model.data.decode import (
    DEFAULT_MAX_DEPTH_BYTES,
    DEFAULT_MAX_PIXELS,
    check_same_size,
    read_depth,
    read_rgb,
)
from model.errors import InputError, IumadError, UnsupportedMediaError

RGB_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
DEPTH_SUFFIXES = {".tif", ".tiff", ".npy"}
ENROLMENT_FILE = "enrolment.json"
COPY_CHUNK = 1 << 20
# Below this many uncompressed bytes a high ratio is harmless (a few blank images compress 1000:1).
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
MAX_NAME_PART_BYTES = 255  # what file systems allow for one path component
# GNU long-name and PAX headers are read whole by tarfile; real ones are a few hundred bytes.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
TAR_BLOCK = 512


class ValidationError(InputError):
    http_status = 422
    code = "validation_error"


class UnsafeArchiveError(InputError):
    """Path traversal, absolute paths, links or device files: refused, never extracted."""

    http_status = 422
    code = "unsafe_archive"


class ArchiveTooLargeError(InputError):
    """Too many members, too many bytes, or a compression ratio only a zip bomb has."""

    http_status = 413
    code = "archive_too_large"


class SamplesRejectedError(InputError):
    """Some files do not form valid pairs; `rejects` says which and why, so the operator can fix them."""

    http_status = 422
    code = "invalid_samples"

    def __init__(self, message: str, rejects: list[RejectedFile]) -> None:
        super().__init__(message)
        self.rejects = rejects

    def __reduce__(self) -> tuple[type, tuple[str, list[RejectedFile]]]:
        """Crosses from the ingest process to the gateway whole (the default drops `rejects`)."""
        return (type(self), (str(self), self.rejects))


@dataclass(frozen=True)
class RejectedFile:
    name: str
    reason: str


@dataclass(frozen=True)
class IngestLimits:
    max_bytes: int
    max_members: int
    max_ratio: float
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_depth_bytes: int = DEFAULT_MAX_DEPTH_BYTES
    min_samples: int = 5

    @classmethod
    def from_settings(cls, settings: Any) -> IngestLimits:
        return cls(
            max_bytes=settings.max_enroll_bytes,
            max_members=settings.max_archive_members,
            max_ratio=settings.max_archive_ratio,
            max_pixels=settings.max_image_pixels,
            max_depth_bytes=settings.max_depth_bytes,
            min_samples=settings.min_enroll_samples,
        )


@dataclass(frozen=True)
class SamplePair:
    """One normal sample: where its files are, and the name the operator gave it."""

    key: str
    rgb: Path
    depth: Path | None


@dataclass
class StoredEnrolment:
    object: str
    enrolment_id: str
    directory: Path
    train: list[SamplePair]
    holdout: list[SamplePair]
    modalities: list[str]
    width: int
    height: int
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "object": self.object,
            "enrolment_id": self.enrolment_id,
            "train_samples": len(self.train),
            "holdout_samples": len(self.holdout),
            "modalities": self.modalities,
            "image_size": [self.width, self.height],
            "skipped": self.skipped[:50],
            "skipped_count": len(self.skipped),
        }


def check_object_name(name: str) -> str:
    if not is_object_name(name):
        raise ValidationError(
            f"object name {name!r} is invalid: use 1-64 characters a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_name_text(name: str, what: str) -> None:
    """Names end in JSON job records and on disk: valid UTF-8, and no component over 255 bytes."""
    try:
        encoded_parts = [part.encode("utf-8") for part in name.split("/")]
    except UnicodeEncodeError:
        raise ValidationError(f"{what} {ascii(name)} has a name that is not valid UTF-8") from None
    if any(len(part) > MAX_NAME_PART_BYTES for part in encoded_parts):
        raise ValidationError(
            f"{what} {name[:80]!r}... has a name part longer than {MAX_NAME_PART_BYTES} bytes"
        )


def check_upload_name(name: str) -> str:
    """A `files` upload's file name: a plain name, never a path."""
    _check_name_text(name, "file")
    if (
        not name
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or name in (".", "..")
        or name.startswith(".")
    ):
        raise UnsafeArchiveError(f"file name {name!r} is not allowed: send plain file names, no paths")
    return name


# ------------------------------------------------------------------------------------ archives


def archive_kind(path: Path) -> str:
    """'zip', 'tar' or 'tar.gz' from the magic bytes (never the file name)."""
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if not head:
        raise ValidationError("the archive is empty (0 bytes)")
    raise UnsupportedMediaError("the archive is not a .zip, .tar or .tar.gz file")


def _safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path to extract a member to; None for junk to skip; raises on traversal."""
    _check_name_text(name, "archive member")
    if "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"archive member {name!r} has a backslash or NUL in its name")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if any(part == ".." for part in parts):
        raise UnsafeArchiveError(f"archive member {name!r} points outside the archive ('..')")
    if not parts or parts[0] == "__MACOSX" or any(part.startswith(".") for part in parts):
        return None  # macOS resource forks, .DS_Store and other hidden files
    return PurePosixPath(*parts)


class _ByteBudget:
    """Counts bytes actually written (headers can lie) against the total and ratio limits."""

    def __init__(self, limits: IngestLimits, compressed_size: int) -> None:
        self.limits = limits
        self.compressed_size = max(1, compressed_size)
        self.members = 0
        self.written = 0

    def add_member(self, name: str) -> None:
        """Every entry counts: files, folders, hidden and skipped ones, extended headers."""
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveTooLargeError(f"the archive has more than {self.limits.max_members} entries")

    def skip(self, size: int) -> None:
        """Bytes decompressed without being written (headers, skipped members) count too."""
        self.written += size
        self.check()

    def check(self, declared: int = 0) -> None:
        total = self.written + declared
        if total > self.limits.max_bytes:
            raise ArchiveTooLargeError(f"the archive expands to more than {self.limits.max_bytes} bytes")
        if total > RATIO_FLOOR_BYTES and total / self.compressed_size > self.limits.max_ratio:
            raise ArchiveTooLargeError(
                f"the archive expands more than {self.limits.max_ratio:.0f} times its size (a zip bomb?)"
            )

    def copy(self, source: IO[bytes], target: Path, declared: int) -> None:
        with target.open("wb") as out:
            while True:
                chunk = source.read(COPY_CHUNK)
                if not chunk:
                    break
                self.written += len(chunk)
                self.check()
                out.write(chunk)
            if declared >= 0 and out.tell() != declared:
                raise ValidationError(f"archive member {target.name!r} is truncated or corrupt")


def _target(dest: Path, relative: PurePosixPath) -> Path:
    target = dest.joinpath(*relative.parts)
    if dest.resolve() not in target.resolve().parents:
        raise UnsafeArchiveError(f"archive member {relative} would be written outside the archive")
    for parent in reversed(target.relative_to(dest).parents[:-1]):
        if (dest / parent).is_file():
            raise ValidationError(f"archive member {relative} is inside {parent}, which is also a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise ValidationError(f"archive member {relative} is a file and also a folder")
    if target.exists():
        raise ValidationError(f"archive member {relative} appears twice")
    return target


def _without_paths(error: BaseException, *paths: Path) -> str:
    """An error message fit for a client: the server's own folders left out."""
    message = str(error)
    for path in paths:
        message = message.replace(str(path), "<archive>")
    return message


def _extract_zip(archive: Path, dest: Path, budget: _ByteBudget) -> Iterator[Path]:
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            if len(members) > budget.limits.max_members:
                raise ArchiveTooLargeError(f"the archive has more than {budget.limits.max_members} files")
            budget.check(sum(info.file_size for info in members))  # cheap refusal before any byte
            for info in members:
                mode = (info.external_attr >> 16) & 0o170000
                if mode == 0o120000:
                    raise UnsafeArchiveError(f"archive member {info.filename!r} is a symbolic link")
                if mode not in (0, 0o100000, 0o040000):
                    raise UnsafeArchiveError(f"archive member {info.filename!r} is not a regular file")
                relative = _safe_member_path(info.filename)
                if info.is_dir() or relative is None:
                    continue
                if info.flag_bits & 0x1:
                    raise UnsafeArchiveError(f"archive member {info.filename!r} is encrypted")
                budget.add_member(info.filename)
                if (
                    info.compress_size
                    and info.file_size / info.compress_size > budget.limits.max_ratio
                    and info.file_size > RATIO_FLOOR_BYTES
                ):
                    raise ArchiveTooLargeError(
                        f"archive member {info.filename!r} expands "
                        f"{info.file_size // info.compress_size} times (a zip bomb?)"
                    )
                target = _target(dest, relative)
                with bundle.open(info) as source:
                    budget.copy(source, target, info.file_size)
                yield target
    except UnicodeDecodeError as error:  # a name flagged UTF-8 that is not
        raise ValidationError(f"a zip member's name is flagged UTF-8 but is not ({error.reason})") from error
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as error:
        message = _without_paths(error, archive, dest)
        raise InputError(f"the zip archive is corrupt or truncated ({message})") from error


def _extract_tar(archive: Path, dest: Path, budget: _ByteBudget) -> Iterator[Path]:
    try:
        # Stream mode: one pass, members checked as they come, nothing seeks back.
        with tarfile.open(archive, mode="r|*", tarinfo=_bounded_tar_info(budget)) as bundle:
            for member in bundle:
                if member.issym() or member.islnk():
                    raise UnsafeArchiveError(f"archive member {member.name!r} is a link")
                if member.isdir():
                    _safe_member_path(member.name)
                    continue
                if not member.isfile():
                    raise UnsafeArchiveError(f"archive member {member.name!r} is not a regular file")
                relative = _safe_member_path(member.name)
                if relative is None:
                    budget.skip(member.size)  # decompressed to reach the next header
                    continue
                budget.check(member.size)
                target = _target(dest, relative)
                source = bundle.extractfile(member)
                if source is None:
                    raise UnsafeArchiveError(f"archive member {member.name!r} cannot be read as a file")
                budget.copy(source, target, member.size)
                yield target
    except (tarfile.TarError, zlib.error, EOFError, OSError) as error:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # our disk is full: not the archive's fault
        message = _without_paths(error, archive, dest)
        raise InputError(f"the tar archive is corrupt or truncated ({message})") from error


def _bounded_tar_info(budget: _ByteBudget) -> type[tarfile.TarInfo]:
    """tarfile's member class, counting every header (and the bytes it makes tarfile read) against
    the limits before tarfile acts on it, and refusing oversized GNU long-name / PAX headers, which
    tarfile would read whole into memory."""

    class BoundedTarInfo(tarfile.TarInfo):
        def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
            budget.add_member(self.name)
            budget.skip(TAR_BLOCK)
            if self.type in EXTENDED_HEADER_TYPES:
                if self.size > MAX_EXTENDED_HEADER_BYTES:
                    raise UnsafeArchiveError(
                        f"the archive has an extended tar header of {self.size} bytes "
                        f"(more than {MAX_EXTENDED_HEADER_BYTES})"
                    )
                budget.skip(self.size)
            return super()._proc_member(tarfile_)

    return BoundedTarInfo


EXTENDED_HEADER_TYPES = frozenset(
    {
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
    }
)


def extract_archive(archive: Path, dest: Path, limits: IngestLimits) -> list[Path]:
    """Extract `archive` into `dest` (which must be empty); returns the files written."""
    kind = archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    budget = _ByteBudget(limits, archive.stat().st_size)
    extractor = _extract_zip if kind == "zip" else _extract_tar
    files = list(extractor(archive, dest, budget))
    if not files:
        raise ValidationError("the archive contains no files")
    return files


# ------------------------------------------------------------------------------------- pairing


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
    pairs: list[SamplePair], root: Path, limits: IngestLimits, workers: int = 2
) -> tuple[tuple[int, int] | None, list[RejectedFile]]:
    """Decode every pair; all must be readable and of one size -> (width, height), rejects."""

    def check(pair: SamplePair) -> tuple[int, int] | RejectedFile:
        try:
            return _pair_size(pair, limits.max_pixels, limits.max_depth_bytes)
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


# ------------------------------------------------------------------------------------- storage


def split_holdout(count: int, fraction: float, seed: str) -> set[int]:
    """Deterministic holdout indices: the same samples and object always give the same split."""
    if not 0.0 <= fraction <= 0.5:
        raise ValidationError(f"holdout_fraction must be between 0 and 0.5, got {fraction}")
    holdout = round(count * fraction)
    if fraction > 0 and count >= 4:
        holdout = max(1, holdout)
    holdout = min(holdout, count - 2)  # training needs at least two samples
    order = np.random.default_rng(zlib.crc32(seed.encode())).permutation(count)
    return {int(index) for index in order[: max(0, holdout)]}


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _place(pair: SamplePair, folder: Path, index: int) -> SamplePair:
    """Move one pair into the enrolment folder (same file system: a rename, no copy)."""
    name = f"{index:04d}"
    rgb = folder / "rgb" / f"{name}{pair.rgb.suffix.lower()}"
    shutil.move(pair.rgb, rgb)
    depth = None
    if pair.depth is not None:
        depth = folder / "depth" / f"{name}{pair.depth.suffix.lower()}"
        shutil.move(pair.depth, depth)
    return SamplePair(key=pair.key, rgb=rgb, depth=depth)


def store_enrolment(
    pairs: list[SamplePair],
    size: tuple[int, int],
    object_name: str,
    enrolment_id: str,
    samples_dir: Path,
    holdout_fraction: float,
    skipped: list[str] | None = None,
    options: dict[str, Any] | None = None,
) -> StoredEnrolment:
    """Write the enrolment durably (fsync, then one rename) and return where everything is."""
    final = Path(samples_dir) / object_name / enrolment_id
    staging = final.parent / f".staging-{enrolment_id}"
    holdout_indices = split_holdout(len(pairs), holdout_fraction, object_name)
    try:
        for split in ("train", "holdout"):
            for role in ("rgb", "depth"):
                (staging / split / role).mkdir(parents=True, exist_ok=True)
        train, holdout = [], []
        for index, pair in enumerate(pairs):
            if index in holdout_indices:
                holdout.append(_place(pair, staging / "holdout", len(holdout)))
            else:
                train.append(_place(pair, staging / "train", len(train)))
        stored = StoredEnrolment(
            object=object_name,
            enrolment_id=enrolment_id,
            directory=final,
            train=train,
            holdout=holdout,
            modalities=["rgb", "depth"] if pairs[0].depth else ["rgb"],
            width=size[0],
            height=size[1],
            skipped=list(skipped or []),
        )
        record = {
            **stored.summary(),
            "created": time.time(),
            "options": options or {},
            "train": [_pair_record(pair, staging) for pair in train],
            "holdout": [_pair_record(pair, staging) for pair in holdout],
        }
        (staging / ENROLMENT_FILE).write_text(json.dumps(record, indent=1))
        for directory, _folders, names in os.walk(staging):
            for name in names:
                _fsync_path(Path(directory) / name)
            _fsync_path(Path(directory))
        os.rename(staging, final)
        _fsync_path(final.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    stored.train = [_moved(pair, staging, final) for pair in train]
    stored.holdout = [_moved(pair, staging, final) for pair in holdout]
    return stored


def _pair_record(pair: SamplePair, base: Path) -> dict[str, str | None]:
    return {
        "key": pair.key,
        "rgb": pair.rgb.relative_to(base).as_posix(),
        "depth": pair.depth.relative_to(base).as_posix() if pair.depth else None,
    }


def _moved(pair: SamplePair, old: Path, new: Path) -> SamplePair:
    return SamplePair(
        key=pair.key,
        rgb=new / pair.rgb.relative_to(old),
        depth=new / pair.depth.relative_to(old) if pair.depth else None,
    )


def load_enrolment(directory: Path) -> StoredEnrolment:
    """Read a stored enrolment back (the worker's side)."""
    path = Path(directory) / ENROLMENT_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"stored enrolment {directory} is missing or unreadable ({error})") from error

    def pairs(entries: list[dict[str, Any]]) -> list[SamplePair]:
        return [
            SamplePair(
                key=entry["key"],
                rgb=directory / entry["rgb"],
                depth=directory / entry["depth"] if entry.get("depth") else None,
            )
            for entry in entries
        ]

    width, height = record["image_size"]
    return StoredEnrolment(
        object=record["object"],
        enrolment_id=record["enrolment_id"],
        directory=Path(directory),
        train=pairs(record["train"]),
        holdout=pairs(record["holdout"]),
        modalities=record["modalities"],
        width=width,
        height=height,
        skipped=record.get("skipped", []),
    )


def ingest_folder(
    root: Path,
    object_name: str,
    enrolment_id: str,
    samples_dir: Path,
    holdout_fraction: float,
    limits: IngestLimits,
    options: dict[str, Any] | None = None,
    files: list[Path] | None = None,
) -> StoredEnrolment:
    """Pair, validate and store the sample files under `root`; raises (storing nothing) on any reject."""
    check_object_name(object_name)
    if files is None:
        files = [path for path in root.rglob("*") if path.is_file() and not path.is_symlink()]
    pairs, rejects, skipped = find_pairs(root, files)
    if not pairs and not rejects:
        raise ValidationError(
            "no RGB images found: send PNG/JPEG RGB files (and optional depth files) "
            "in MVTec 3D-AD layout (rgb/ + xyz/) or as pairs by stem"
        )
    size, invalid = validate_pairs(pairs, root, limits)
    rejects.extend(invalid)
    if rejects:
        raise SamplesRejectedError(
            f"{len(rejects)} of the uploaded samples are invalid; nothing was stored", rejects
        )
    if len(pairs) < limits.min_samples:
        raise ValidationError(
            f"too few samples: {len(pairs)} valid pairs, at least {limits.min_samples} needed"
        )
    assert size is not None
    return store_enrolment(
        pairs, size, object_name, enrolment_id, samples_dir, holdout_fraction, skipped, options
    )


def remove_idle_folders(folders: Iterable[Path], idle_s: float) -> list[Path]:
    """Delete the folders in which nothing changed for `idle_s`: uploads and `.staging-*` folders a
    killed gateway left behind (one still being written by a live gateway changes all the time)."""
    removed = []
    now = time.time()
    for folder in folders:
        if not folder.is_dir():
            continue
        newest = max((path.stat().st_mtime for path in folder.rglob("*")), default=folder.stat().st_mtime)
        if now - max(newest, folder.stat().st_mtime) > idle_s:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def discard_enrolment(samples_dir: Path, object_name: str, enrolment_id: str) -> None:
    """Remove the samples of an enrolment no model version uses (its job failed or was canceled)."""
    check_object_name(object_name)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", enrolment_id):
        raise ValidationError(f"{enrolment_id!r} is not an enrolment id")
    folder = Path(samples_dir) / object_name
    shutil.rmtree(folder / enrolment_id, ignore_errors=True)
    with contextlib.suppress(OSError):  # the object's folder goes only when no enrolment is left
        folder.rmdir()


def sample_source(pair: SamplePair) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
    """A zero-argument loader, as the trainer wants (files are read only when needed)."""

    def load() -> tuple[np.ndarray, np.ndarray | None]:
        rgb = read_rgb(pair.rgb)
        depth = read_depth(pair.depth) if pair.depth is not None else None
        return rgb, depth

    return load


def ingest_archive(
    archive: Path,
    work_dir: Path,
    object_name: str,
    enrolment_id: str,
    samples_dir: Path,
    holdout_fraction: float,
    limits: IngestLimits,
    options: dict[str, Any] | None = None,
) -> StoredEnrolment:
    """Extract `archive` under `work_dir` (the caller removes it), then `ingest_folder`."""
    check_object_name(object_name)
    root = work_dir / "extracted"
    files = extract_archive(archive, root, limits)
    return ingest_folder(
        root, object_name, enrolment_id, samples_dir, holdout_fraction, limits, options, files
    )


@dataclass(frozen=True)
class UploadedSamples:
    """What an enrolment upload left on disk, for `ingest_upload`: plain data, as it is sent to the
    gateway's ingest process."""

    object_name: str
    enrolment_id: str
    work_dir: Path
    samples_dir: Path
    holdout_fraction: float
    limits: IngestLimits
    archive: Path | None = None
    files: tuple[tuple[str, Path], ...] = ()  # (the name the client gave, where it was received)


def ingest_upload(upload: UploadedSamples) -> StoredEnrolment:
    """An uploaded archive, or flat files, -> stored samples; raises (storing nothing) on any reject."""
    if upload.archive is not None:
        return ingest_archive(
            upload.archive,
            upload.work_dir,
            upload.object_name,
            upload.enrolment_id,
            upload.samples_dir,
            upload.holdout_fraction,
            upload.limits,
        )
    folder = upload.work_dir / "files"
    folder.mkdir(parents=True, exist_ok=True)
    for filename, received in upload.files:
        target = folder / check_upload_name(filename)
        if target.exists():
            raise ValidationError(f"file {filename!r} was sent twice")
        received.rename(target)
    return ingest_folder(
        folder,
        upload.object_name,
        upload.enrolment_id,
        upload.samples_dir,
        upload.holdout_fraction,
        upload.limits,
    )
