"""The feedback store: operators' corrections of inspections, with the part's images, until used.

An operator marks an inspection `good` (a false reject) or `defective` (a confirmed or a missed
defect). Each correction is one JSON file plus the part's images under
`data_dir/feedback/<object>/<request id>.json` (`..._rgb.<ext>`, `..._depth.<ext>`), written
atomically (images first, the JSON last, so a reader never sees a correction without its images).
The gateway writes it; a refinement job reads the pending ones. A correction stays until a
refinement has used it or an operator discards it; the store is kept under `max_bytes` by refusing
new corrections, never by deleting stored ones.

One correction per inspection: sending a verdict again replaces the earlier one (the last word
counts), with the same images.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.names import is_object_name
from model.data.decode import sniff_format
from model.errors import ConflictError, InputError

Verdict = Literal["good", "defective"]
VERDICTS: tuple[Verdict, ...] = ("good", "defective")
RECORD_VERSION = 1


class CorrectionImagesError(InputError):
    """Attached images that cannot train the object: a modality it does not have, or lacks."""

    code = "validation_error"


class FeedbackStoreFullError(ConflictError):
    """The store holds as much as it may: corrections must be used (refine) or discarded first."""

    code = "feedback_store_full"


@dataclass(frozen=True)
class InspectionFacts:
    """What the gateway answered for the inspection being corrected (from its decision log)."""

    request_id: str
    object: str
    model_version: str
    score: float
    raw_score: float
    threshold: float
    decision: str  # "pass" | "fail"
    inspected_at: str


@dataclass(frozen=True)
class Correction:
    """One operator verdict on one inspection, and where its images are (file names by role)."""

    inspection: InspectionFacts
    verdict: Verdict
    marked_by: str  # the key's id (service/auth.py), never the key
    marked_at: str
    images: dict[str, str] = field(default_factory=dict)  # role -> file name next to the record
    images_source: Literal["kept", "attached"] = "kept"
    version: int = RECORD_VERSION

    @property
    def request_id(self) -> str:
        return self.inspection.request_id

    @property
    def object(self) -> str:
        return self.inspection.object

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown feedback record version {data.get('version')!r}")
        values = dict(data)
        values["inspection"] = InspectionFacts(**values["inspection"])
        return cls(**values)


class FeedbackStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def _folder(self, object_name: str) -> Path:
        if not is_object_name(object_name):
            raise ValueError(f"not an object name: {object_name!r}")
        return self.root / object_name

    def _record_path(self, object_name: str, request_id: str) -> Path:
        return self._folder(object_name) / f"{request_id}.json"

    def put(self, correction: Correction, images: dict[str, bytes] | None) -> Correction:
        """Store `correction` with `images` (role -> bytes as sent); None keeps the images an earlier
        verdict on the same inspection stored. Raises FeedbackStoreFullError at the limit."""
        folder = self._folder(correction.object)
        previous = self.get(correction.object, correction.request_id)
        if images is None:
            if previous is None:
                raise ValueError("a first verdict needs the part's images")
            stored = dict(previous.images)
        else:
            incoming = sum(len(data) for data in images.values())
            if self.bytes_used() + incoming > self.max_bytes:
                raise FeedbackStoreFullError(
                    f"the feedback store holds {self.bytes_used() / 2**20:.0f} MiB of its "
                    f"{self.max_bytes / 2**20:.0f} MiB (IUMAD_FEEDBACK_MAX_MB): refine the objects or "
                    "discard corrections first"
                )
            folder.mkdir(parents=True, exist_ok=True)
            stored = {}
            for role, data in images.items():
                name = f"{correction.request_id}_{role}.{sniff_format(data) or 'bin'}"
                _write_atomically(folder / name, data)
                stored[role] = name
            if previous is not None:
                for name in set(previous.images.values()) - set(stored.values()):
                    (folder / name).unlink(missing_ok=True)
        correction = replace(correction, images=stored)
        _write_atomically(
            self._record_path(correction.object, correction.request_id),
            json.dumps(correction.to_dict(), indent=1).encode(),
        )
        return correction

    def get(self, object_name: str, request_id: str) -> Correction | None:
        path = self._record_path(object_name, request_id)
        try:
            return Correction.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            return None

    def pending(self, object_name: str) -> list[Correction]:
        """The object's corrections not yet used by a refinement, oldest verdict first."""
        folder = self._folder(object_name)
        if not folder.is_dir():
            return []
        corrections = [Correction.from_dict(json.loads(p.read_text())) for p in folder.glob("*.json")]
        return sorted(corrections, key=lambda c: c.marked_at)

    def objects(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []

    def image_path(self, correction: Correction, role: str) -> Path | None:
        name = correction.images.get(role)
        return self._folder(correction.object) / name if name else None

    def discard(self, object_name: str, request_id: str) -> bool:
        """Remove a correction and its images; False when there was none."""
        correction = self.get(object_name, request_id)
        if correction is None:
            return False
        self._record_path(object_name, request_id).unlink(missing_ok=True)  # the record first
        for name in correction.images.values():
            (self._folder(object_name) / name).unlink(missing_ok=True)
        return True

    def bytes_used(self) -> int:
        return sum(path.stat().st_size for path in self._files())

    def _files(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from (path for path in self.root.rglob("*") if path.is_file())


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def correction_source(
    store: FeedbackStore, correction: Correction
) -> Callable[[], tuple[np.ndarray, np.ndarray | None]]:
    """A correction's part as a lazy sample source (files read when called), as training takes it."""
    from model.data.decode import decode_depth, decode_rgb

    rgb_path = store.image_path(correction, "rgb")
    depth_path = store.image_path(correction, "depth")
    if rgb_path is None:
        raise ValueError(f"correction {correction.request_id} has no rgb image")

    def load() -> tuple[np.ndarray, np.ndarray | None]:
        rgb = decode_rgb(rgb_path.read_bytes(), name=rgb_path.name)
        depth = decode_depth(depth_path.read_bytes(), name=depth_path.name) if depth_path else None
        return rgb, depth

    return load
