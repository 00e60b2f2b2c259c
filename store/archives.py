"""Unpacking an enrolment archive safely: every limit checked before and while bytes are written.

An archive (`.zip`, `.tar`, `.tar.gz`, told apart by its magic bytes) is extracted member by member:
no path leaves the extraction folder, no links or devices, and the member count, total size and
compression ratio stay under the limits (zip bombs, headers that lie, oversized tar headers).
"""

from __future__ import annotations

import errno
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from model.errors import InputError, UnsupportedMediaError
from store.samples import EnrolmentInputError

COPY_CHUNK = 1 << 20
# Below this many uncompressed bytes a high ratio is harmless (a few blank images compress 1000:1).
RATIO_FLOOR_BYTES = 64 * 1024 * 1024
MAX_NAME_PART_BYTES = 255  # what file systems allow for one path component
# GNU long-name and PAX headers are read whole by tarfile; real ones are a few hundred bytes.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
TAR_BLOCK = 512


class UnsafeArchiveError(InputError):
    """Path traversal, absolute paths, links or device files: refused, never extracted."""

    code = "unsafe_archive"


class ArchiveTooLargeError(InputError):
    """Too many members, too many bytes, or a compression ratio only a zip bomb has."""

    code = "archive_too_large"


@dataclass(frozen=True)
class ArchiveLimits:
    max_bytes: int  # what the archive may expand to
    max_members: int  # entries of every kind
    max_ratio: float  # expansion over the archive's own size


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

    def __init__(self, limits: ArchiveLimits, compressed_size: int) -> None:
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


def extract_archive(archive: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    """Extract `archive` into `dest` (which must be empty); returns the files written."""
    kind = archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    budget = _ByteBudget(limits, archive.stat().st_size)
    extractor = _extract_zip if kind == "zip" else _extract_tar
    files = list(extractor(archive, dest, budget))
    if not files:
        raise EnrolmentInputError("the archive contains no files")
    return files
