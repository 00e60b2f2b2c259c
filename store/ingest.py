"""Enrolment ingest: an upload's files -> validated sample pairs in the sample store.

Runs in the gateway's ingest processes (service/executors.py), before the job is queued, so a bad
upload is refused at once with the reason. An enrolment arrives as a folder of uploaded files or as
one archive: it is unpacked safely (store/archives.py), paired and decoded (store/pairing.py), and
only a fully valid enrolment is stored (store/samples.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.data.decode import DEFAULT_MAX_DEPTH_BYTES, DEFAULT_MAX_PIXELS
from store.archives import ArchiveLimits, check_upload_name, extract_archive
from store.pairing import SamplesRejectedError, find_pairs, validate_pairs
from store.samples import EnrolmentInputError, StoredEnrolment, check_object_name, store_enrolment


@dataclass(frozen=True)
class IngestLimits:
    max_bytes: int
    max_members: int
    max_ratio: float
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_depth_bytes: int = DEFAULT_MAX_DEPTH_BYTES
    min_samples: int = 5
    min_holdout: int = 0  # held-out pairs a threshold is calibrated on, at least (when any are held out)

    @property
    def archive(self) -> ArchiveLimits:
        return ArchiveLimits(self.max_bytes, self.max_members, self.max_ratio)

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
    size, invalid = validate_pairs(pairs, root, limits.max_pixels, limits.max_depth_bytes)
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
    files = extract_archive(archive, root, limits.archive)
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
