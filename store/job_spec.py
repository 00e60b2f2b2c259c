"""The enrolment job's contract: what the gateway queues and a worker runs, as one typed record.

It travels as JSON through rq (`JOB_SERIALIZER`): written with `to_dict`, read with `from_dict`, and
versioned, so that a worker refuses a spec it does not know instead of reading half of it. Jobs
queued before the version field existed carry the same fields and are read as version 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from model.checkpoint import DEFAULT_FALSE_REJECT_RATE
from model.errors import InputError
from store.job_store import JobRecord

SPEC_VERSION = 1


@dataclass(frozen=True)
class EnrolmentSpec:
    object: str
    enrolment_id: str  # the stored samples: samples_dir/<object>/<enrolment id>; also the job's id
    max_minutes: float  # the job's budget, end to end
    replace: bool = False  # retrain an enrolled object
    target_false_reject_rate: float = DEFAULT_FALSE_REJECT_RATE
    holdout_fraction: float | None = None  # what the upload asked for (the split is made at ingest)
    retry_of: str | None = None  # the failed job this one retries, on its samples

    @property
    def enrolment(self) -> str:
        """The samples' path under samples_dir, as model lineages record it."""
        return f"{self.object}/{self.enrolment_id}"

    def options(self) -> dict[str, Any]:
        """What the job record shows as its options (`GET /jobs/{id}`)."""
        shown = {
            "holdout_fraction": self.holdout_fraction,
            "target_false_reject_rate": self.target_false_reject_rate,
            "max_minutes": self.max_minutes,
        }
        return shown | ({"retry_of": self.retry_of} if self.retry_of else {})

    @classmethod
    def retrying(cls, failed: JobRecord, job_id: str) -> EnrolmentSpec:
        """The spec of a new job `job_id` that retries `failed` on its stored samples."""
        given = {**failed.options, "object": failed.object, "replace": failed.replace}
        return cls.from_dict({**given, "enrolment_id": job_id, "retry_of": failed.id})

    def to_dict(self) -> dict[str, Any]:
        return {"spec_version": SPEC_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EnrolmentSpec:
        version = values.get("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise InputError(f"enrolment spec version {version} is not {SPEC_VERSION}: upgrade this worker")
        known = {field.name for field in fields(cls)}
        given = dict(values)
        if "enrolment_id" not in given and "enrolment" in given:  # queued before version 1 had a name
            given["enrolment_id"] = str(given["enrolment"]).partition("/")[2]
        return cls(**{name: value for name, value in given.items() if name in known})


@dataclass(frozen=True)
class RefinementSpec:
    """A refinement job (`POST /objects/{name}/refine`): which object, and which of its pending
    corrections (request ids, fixed when the job is queued: later ones wait for the next)."""

    object: str
    job_id: str
    max_minutes: float
    corrections: tuple[str, ...]

    def options(self) -> dict[str, Any]:
        return {"max_minutes": self.max_minutes, "corrections": len(self.corrections)}

    def to_dict(self) -> dict[str, Any]:
        return {"spec_version": SPEC_VERSION, **asdict(self), "corrections": list(self.corrections)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RefinementSpec:
        version = values.get("spec_version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise InputError(f"refinement spec version {version} is not {SPEC_VERSION}: upgrade this worker")
        return cls(
            object=values["object"],
            job_id=values["job_id"],
            max_minutes=float(values["max_minutes"]),
            corrections=tuple(values["corrections"]),
        )
