"""The sample store: enrolments' normal samples on disk, written once, read by the worker's jobs.

`samples_dir/<object>/<enrolment id>/{train,holdout}/{rgb,depth}/` plus `enrolment.json`, written in
one atomic step (model/atomic_write.py) so a job never sees half an enrolment. The gateway writes it
(store/ingest.py), the worker reads it; samples no model version uses are removed when their job
ends without one.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.names import is_job_id, is_object_name
from model.atomic_write import publish_directory
from model.errors import InputError, IumadError

if TYPE_CHECKING:
    from store.job_store import JobStore

ENROLMENT_FILE = "enrolment.json"


class EnrolmentInputError(InputError):
    """An enrolment request or its samples are not acceptable (a name, a layout, a count)."""

    code = "validation_error"


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
        raise EnrolmentInputError(
            f"object name {name!r} is invalid: use 1-64 characters a-z, 0-9, '_' or '-', "
            "starting with a letter or digit"
        )
    return name


MIN_TRAIN_PAIRS = 2  # what a training step needs at the least


def split_holdout(count: int, fraction: float, seed: str, minimum: int = 0) -> set[int]:
    """Deterministic holdout indices: the same samples and object always give the same split. With
    a `fraction`, at least `minimum` pairs are held out (a threshold from a handful of normal scores
    is degenerate: two held-out pairs once both scored 0.7071 and became the threshold)."""
    if not 0.0 <= fraction <= 0.5:
        raise EnrolmentInputError(f"holdout_fraction must be between 0 and 0.5, got {fraction}")
    holdout = round(count * fraction)
    if fraction > 0 and count >= 4:
        holdout = max(1, minimum, holdout)
    holdout = min(holdout, count - MIN_TRAIN_PAIRS)
    order = np.random.default_rng(zlib.crc32(seed.encode())).permutation(count)
    return {int(index) for index in order[: max(0, holdout)]}


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
    min_holdout: int = 0,
) -> StoredEnrolment:
    """Write the enrolment durably (fsync, then one rename) and return where everything is."""
    final = Path(samples_dir) / object_name / enrolment_id
    staging = final.parent / f".staging-{enrolment_id}"
    holdout_indices = split_holdout(len(pairs), holdout_fraction, object_name, min_holdout)
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
        publish_directory(staging, final)
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
    if not is_job_id(enrolment_id):
        raise EnrolmentInputError(f"{enrolment_id!r} is not an enrolment id")
    folder = Path(samples_dir) / object_name
    shutil.rmtree(folder / enrolment_id, ignore_errors=True)
    with contextlib.suppress(OSError):  # the object's folder goes only when no enrolment is left
        folder.rmdir()


def move_enrolment(samples_dir: Path, object_name: str, enrolment_id: str, new_id: str) -> StoredEnrolment:
    """Give a stored enrolment to another job (a retry): one rename of its folder, and its record
    rewritten to name the new id (a job and its samples share a name). Raises InputError when the
    samples are no longer stored."""
    check_object_name(object_name)
    if not (is_job_id(enrolment_id) and is_job_id(new_id)):
        raise EnrolmentInputError("not an enrolment id")
    old = Path(samples_dir) / object_name / enrolment_id
    new = old.parent / new_id
    old.rename(new)  # FileNotFoundError when the samples are gone
    path = new / ENROLMENT_FILE
    record = json.loads(path.read_text())
    record["enrolment_id"] = new_id
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(record, indent=1))
    temporary.replace(path)
    return load_enrolment(new)


def sample_source(pair: SamplePair) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
    """A stored pair as a lazy training source (files are read only when needed). The dataset
    loader is imported here, not at the top: it needs torch, which the gateway's ingest processes
    and the worker's parent process never load."""
    from model.data.samples import GOOD, Sample
    from model.data.samples import sample_source as dataset_sample_source

    return dataset_sample_source(Sample("", "train", GOOD, pair.rgb, pair.depth, None))


def referenced_enrolments(models_dir: Path) -> set[str]:
    """Every `<object>/<enrolment id>` a model version on disk was trained from (its lineage)."""
    from model.checkpoint import read_manifest

    referenced: set[str] = set()
    for version in models_dir.iterdir() if models_dir.is_dir() else []:
        if version.is_dir() and not version.name.startswith("."):
            with contextlib.suppress(IumadError, OSError, ValueError):
                samples = read_manifest(version).training.get("samples") or {}
                referenced.update(str(value) for value in samples.values())
    return referenced


def remove_unused_enrolments(
    samples_dir: Path, models_dir: Path, jobs: JobStore, keep_failed_s: float = 0.0
) -> list[Path]:
    """Delete stored samples that no version uses and whose job ended without one: canceled at
    once, failed once they have been kept `keep_failed_s` for a retry (`POST /jobs/{id}/retry`; a
    job killed mid-way cannot clean up after itself). Samples of open or succeeded jobs stay."""
    referenced = referenced_enrolments(models_dir)
    removed = []
    now = time.time()
    for folder in samples_dir.glob("*/*") if samples_dir.is_dir() else []:
        name = f"{folder.parent.name}/{folder.name}"
        if not folder.is_dir() or folder.name.startswith(".") or name in referenced:
            continue
        record = jobs.get(folder.name, reconcile=False)
        if record is None:
            continue
        ended = record.finished_at if record.finished_at is not None else record.created_at
        expired = record.status == "failed" and now - ended >= keep_failed_s
        if record.status == "canceled" or expired:
            discard_enrolment(samples_dir, folder.parent.name, folder.name)
            removed.append(folder)
    return removed
