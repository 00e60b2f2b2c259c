"""Enrolment ingest: an upload's files -> validated sample pairs in the sample store.

Runs in the gateway's ingest processes (service/executors.py), before the job is queued, so a bad
upload is refused at once with the reason. An enrolment arrives as a folder of uploaded files or as one archive (`.zip`, `.tar`, `.tar.gz`).
Archives are extracted member by member with every limit checked before and while bytes are written:
no path leaves the extraction folder, no links, and the member count, total size and compression
ratio stay under the configured limits (zip bombs). Pairs are found by layout, every pair is decoded
and size-checked, and only a fully valid enrolment is stored (store/samples.py).
"""

from __future__ import annotations

import errno
import os
import re
import tarfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from model.data.decode import (
    DEFAULT_MAX_DEPTH_BYTES,
    DEFAULT_MAX_PIXELS,
    check_same_size,
    read_depth,
    read_rgb,
)
from model.errors import InputError, IumadError, UnsupportedMediaError
from store.samples import (
    EnrolmentInputError,
    SamplePair,
    StoredEnrolment,
    check_object_name,
    store_enrolment,
)

RGB_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
DEPTH_SUFFIXES = {".tif", ".tiff", ".npy"}
COPY_CHUNK = 1 << 20
# Below this many uncompressed bytes a high ratio is harmless (a few blank images compress 1000:1).
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
MAX_NAME_PART_BYTES = 255  # what file systems allow for one path component
# GNU long-name and PAX headers are read whole by tarfile; real ones are a few hundred bytes.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
TAR_BLOCK = 512
MAX_REJECTS_SHOWN = 200  # of the rejected files an answer lists (the message counts them all)


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
        self.details = [{"file": r.name, "reason": r.reason} for r in rejects[:MAX_REJECTS_SHOWN]]

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
    min_holdout: int = 0  # held-out pairs a threshold is calibrated on, at least (when any are held out)

    @classmethod
    def from_settings(cls, settings: Any) -> IngestLimits:
        return cls(
            max_bytes=settings.max_enroll_bytes,
            max_members=settings.max_archive_members,
            max_ratio=settings.max_archive_ratio,
            max_pixels=settings.max_image_pixels,
            max_depth_bytes=settings.max_depth_bytes,
            min_samples=settings.min_enroll_samples,
            min_holdout=settings.min_holdout_samples,
        )


def _check_name_text(name: str, what: str) -> None:
    """Names end in JSON job records and on disk: valid UTF-8, and no component over 255 bytes."""
    try:
        encoded_parts = [part.encode("utf-8") for part in name.split("/")]
    except UnicodeEncodeError:
        raise EnrolmentInputError(f"{what} {ascii(name)} has a name that is not valid UTF-8") from None
    if any(len(part) > MAX_NAME_PART_BYTES for part in encoded_parts):
        raise EnrolmentInputError(
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
        raise EnrolmentInputError("the archive is empty (0 bytes)")
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
                raise EnrolmentInputError(f"archive member {target.name!r} is truncated or corrupt")


def _target(dest: Path, relative: PurePosixPath) -> Path:
    target = dest.joinpath(*relative.parts)
    if dest.resolve() not in target.resolve().parents:
        raise UnsafeArchiveError(f"archive member {relative} would be written outside the archive")
    for parent in reversed(target.relative_to(dest).parents[:-1]):
        if (dest / parent).is_file():
            raise EnrolmentInputError(f"archive member {relative} is inside {parent}, which is also a file")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        raise EnrolmentInputError(f"archive member {relative} is a file and also a folder")
    if target.exists():
        raise EnrolmentInputError(f"archive member {relative} appears twice")
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
        raise EnrolmentInputError(
            f"a zip member's name is flagged UTF-8 but is not ({error.reason})"
        ) from error
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
        raise EnrolmentInputError("the archive contains no files")
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
        raise EnrolmentInputError(
            "no RGB images found: send PNG/JPEG RGB files (and optional depth files) "
            "in MVTec 3D-AD layout (rgb/ + xyz/) or as pairs by stem"
        )
    size, invalid = validate_pairs(pairs, root, limits)
    rejects.extend(invalid)
    if rejects:
        raise SamplesRejectedError(
            f"{len(rejects)} of the uploaded samples are invalid; nothing was stored", rejects
        )
    # As many to train on as are held out, at least: the held-out ones set the threshold.
    needed = max(limits.min_samples, 2 * limits.min_holdout if holdout_fraction > 0 else 0)
    if len(pairs) < needed:
        why = (
            f" ({limits.min_holdout} held out to set the threshold, as many to train on)"
            if needed > limits.min_samples
            else ""
        )
        raise EnrolmentInputError(f"too few samples: {len(pairs)} valid pairs, at least {needed} needed{why}")
    assert size is not None
    return store_enrolment(
        pairs, size, object_name, enrolment_id, samples_dir, holdout_fraction, skipped, options,
        limits.min_holdout,
    )  # fmt: skip


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
            raise EnrolmentInputError(f"file {filename!r} was sent twice")
        received.rename(target)
    return ingest_folder(
        folder,
        upload.object_name,
        upload.enrolment_id,
        upload.samples_dir,
        upload.holdout_fraction,
        upload.limits,
    )
