"""Enrolment job records in Redis: status, progress, timings and results, for `GET /jobs/{id}`.

rq's own job hash expires after its result TTL and knows nothing of stages, so every job also has a
record `<prefix>:job:<id>` that the training job updates as it goes. Reading a record reconciles it
with what rq and the heartbeat say: a job whose work horse was killed (or whose worker vanished
with it) never reports again, so it is marked `failed` with a message that says what happened.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast, get_args

from redis import Redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from core.settings import Settings
from store.connection import DELETE_IF_EQUAL, text, text_fields

# rq pickles job data by default, so whoever could write Redis would run code in every gateway that
# fetches a job and every worker that runs one. Jobs carry only JSON (a spec dict in, a result dict out).
JOB_SERIALIZER = JSONSerializer

JobState = Literal["queued", "running", "succeeded", "failed", "canceled", "needs_review"]
JobKind = Literal["enrolment", "refinement"]  # a new object's step, or an enrolled object's refinement
STATES: tuple[str, ...] = get_args(JobState)
TERMINAL = frozenset({"succeeded", "failed", "canceled", "needs_review"})
JSON_FIELDS = ("timings", "metrics", "enrolment", "options", "guard")
INDEX_LENGTH = 1000
# A queued record may exist a moment before its rq job does (record first, then enqueue).
ENQUEUE_GRACE_S = 30.0

# KEYS: record. ARGV: field, value, field, value, ... Applies only while the job is not finished, so a
# late writer (a killed job's cancel route, a reconciling reader) never overwrites a final state.
_UPDATE_IF_OPEN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if status == 'succeeded' or status == 'failed' or status == 'canceled' or status == 'needs_review' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: reservation. ARGV: job id. Changes the reservation only while that job holds it.
_KEEP_IF_HELD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PERSIST', KEYS[1]) end
return 0
"""
# An upload being received and checked holds its object's name this long at most; once its job is
# queued the reservation lasts until the job finishes.
RESERVATION_TTL_S = 3600


@dataclass
class JobRecord:
    id: str
    object: str
    status: JobState
    progress: float = 0.0
    stage: str = ""
    message: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    version: str | None = None
    parent: str | None = None
    replace: bool = False
    cancel_requested: bool = False
    timings: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    enrolment: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    guard: dict[str, Any] = field(default_factory=dict)
    kind: JobKind = "enrolment"

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "kind": self.kind,
            "object": self.object,
            "status": self.status,
            "progress": round(self.progress, 4),
            "stage": self.stage,
            "message": self.message,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "version": self.version,
            "parent": self.parent,
            "replace": self.replace,
            "cancel_requested": self.cancel_requested,
            "timings": self.timings,
            "metrics": self.metrics,
            "forgetting_guard": self.guard,
            "enrolment": self.enrolment,
            "options": self.options,
        }


def _state(value: str) -> JobState:
    if value not in STATES:
        raise ValueError(f"a job record holds the unknown state {value!r}")
    return cast(JobState, value)


def _optional_float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


class JobStore:
    def __init__(self, redis: Redis, prefix: str = "iumad", heartbeat_timeout_s: float = 30.0) -> None:
        self.redis = redis
        self.prefix = prefix
        self.index_key = f"{prefix}:jobs"
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._update_if_open = redis.register_script(_UPDATE_IF_OPEN)
        self._release_if_held = redis.register_script(DELETE_IF_EQUAL)
        self._keep_if_held = redis.register_script(_KEEP_IF_HELD)

    @classmethod
    def for_settings(cls, redis: Redis, settings: Settings) -> JobStore:
        """The deployment's job store (its key prefix and heartbeat timeout): how every process opens it."""
        return cls(redis, settings.redis_key_prefix, settings.job_heartbeat_timeout_s)

    def key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    # ------------------------------------------------------------------------- reservations

    def reservation_key(self, object_name: str) -> str:
        return f"{self.prefix}:reservation:{object_name}"

    def reserve(self, object_name: str, job_id: str) -> str | None:
        """Reserve `object_name` for `job_id` (SET NX): None when it is ours, else the holding job's
        id. One enrolment per object at a time, from its upload until its job ends; a holder whose
        job already finished (its release was lost in a crash) gives way."""
        key = self.reservation_key(object_name)
        holder = None
        for _ in range(2):
            if self.redis.set(key, job_id, nx=True, ex=RESERVATION_TTL_S):
                return None
            holder = text(self.redis.get(key))
            record = self.get(holder) if holder else None
            if holder and not (record is not None and record.finished):
                return holder
            if holder:
                self._release_if_held(keys=[key], args=[holder])
        return holder

    def keep_reservation(self, object_name: str, job_id: str) -> None:
        """The job is queued: its reservation lasts until it finishes (`finish` releases it)."""
        self._keep_if_held(keys=[self.reservation_key(object_name)], args=[job_id])

    def release(self, object_name: str, job_id: str) -> None:
        self._release_if_held(keys=[self.reservation_key(object_name)], args=[job_id])

    # ------------------------------------------------------------------------------- writing

    def create(
        self,
        job_id: str,
        object_name: str,
        replace: bool,
        enrolment: dict[str, Any],
        options: dict[str, Any],
        kind: JobKind = "enrolment",
    ) -> JobRecord:
        now = time.time()
        record = JobRecord(
            id=job_id,
            kind=kind,
            object=object_name,
            status="queued",
            stage="queued",
            created_at=now,
            replace=replace,
            enrolment=enrolment,
            options=options,
            message="waiting for a training worker",
        )
        with self.redis.pipeline() as pipe:
            pipe.hset(
                self.key(job_id),
                mapping=self._encode(
                    {
                        "id": job_id,
                        "kind": kind,
                        "object": object_name,
                        "status": "queued",
                        "progress": 0.0,
                        "stage": "queued",
                        "message": record.message,
                        "created_at": now,
                        "replace": int(replace),
                        "enrolment": enrolment,
                        "options": options,
                    }
                ),
            )
            pipe.zadd(self.index_key, {job_id: now})
            pipe.zremrangebyrank(self.index_key, 0, -INDEX_LENGTH - 1)
            pipe.execute()
        return record

    def delete(self, job_id: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key(job_id))
            pipe.zrem(self.index_key, job_id)
            pipe.execute()

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set fields while the job is open; returns False (changing nothing) once it has finished."""
        fields.setdefault("heartbeat_at", time.time())
        arguments: list[Any] = []
        for name, value in self._encode(fields).items():
            arguments += [name, value]
        return bool(self._update_if_open(keys=[self.key(job_id)], args=arguments))

    def finish(self, job_id: str, status: str, message: str, **fields: Any) -> bool:
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a final job state")
        finished = self.update(job_id, status=status, message=message, finished_at=time.time(), **fields)
        if finished:
            object_name = text(self.redis.hget(self.key(job_id), "object"))
            if object_name:
                self.release(object_name, job_id)
        return finished

    def beat(self, job_id: str) -> None:
        """The running job's heartbeat: a record whose beat stops is judged dead (`_verdict`)."""
        self.redis.hset(self.key(job_id), "heartbeat_at", time.time())

    def request_cancel(self, job_id: str) -> None:
        self.redis.hset(self.key(job_id), "cancel_requested", 1)

    def cancel_requested(self, job_id: str) -> bool:
        return self.redis.hget(self.key(job_id), "cancel_requested") in (b"1", "1")

    @staticmethod
    def _encode(fields: dict[str, Any]) -> dict[str, str | float | int]:
        encoded: dict[str, str | float | int] = {}
        for name, value in fields.items():
            if name in JSON_FIELDS:
                encoded[name] = json.dumps(value)
            elif isinstance(value, bool):
                encoded[name] = int(value)
            elif value is None:
                encoded[name] = ""
            else:
                encoded[name] = value
        return encoded

    # ------------------------------------------------------------------------------- reading

    def get(self, job_id: str, reconcile: bool = True) -> JobRecord | None:
        raw = self.redis.hgetall(self.key(job_id))
        if not raw:
            return None
        record = self._record(text_fields(raw))
        if reconcile and not record.finished:
            verdict = self._verdict(record)
            if verdict is not None:
                status, message = verdict
                self.finish(job_id, status, message)
                record = self._record(text_fields(self.redis.hgetall(self.key(job_id))))
        return record

    def list(self, limit: int = 50, status: str | None = None) -> list[JobRecord]:
        """Newest first; one round trip for the records, reconciling only the open ones."""
        ids = [str(text(i)) for i in self.redis.zrevrange(self.index_key, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.key(job_id))
            raws = pipe.execute()
        records = []
        for job_id, raw in zip(ids, raws, strict=True):
            if not raw:
                continue
            record = self._record(text_fields(raw))
            if not record.finished:
                record = self.get(job_id) or record
            if status is not None and record.status != status:
                continue
            records.append(record)
            if len(records) >= limit:
                break
        return records

    def open_jobs(self) -> list[JobRecord]:
        return [record for record in self.list(limit=INDEX_LENGTH) if not record.finished]

    def _record(self, values: dict[str, str]) -> JobRecord:
        def loads(name: str) -> dict[str, Any]:
            return json.loads(values[name]) if values.get(name) else {}

        return JobRecord(
            id=values.get("id", ""),
            kind="refinement" if values.get("kind") == "refinement" else "enrolment",
            object=values.get("object", ""),
            status=_state(values.get("status", "queued")),
            progress=float(values.get("progress") or 0.0),
            stage=values.get("stage", ""),
            message=values.get("message", ""),
            created_at=float(values.get("created_at") or 0.0),
            started_at=_optional_float(values.get("started_at")),
            finished_at=_optional_float(values.get("finished_at")),
            heartbeat_at=_optional_float(values.get("heartbeat_at")),
            version=values.get("version") or None,
            parent=values.get("parent") or None,
            replace=values.get("replace") == "1",
            cancel_requested=values.get("cancel_requested") == "1",
            timings=loads("timings"),
            metrics=loads("metrics"),
            enrolment=loads("enrolment"),
            options=loads("options"),
            guard=loads("guard"),
        )

    def _verdict(self, record: JobRecord) -> tuple[str, str] | None:
        """(final status, message) when rq or a silent heartbeat says an open job is over, else None."""
        now = time.time()
        try:
            rq_job = Job.fetch(record.id, connection=self.redis, serializer=JOB_SERIALIZER)
            rq_status = rq_job.get_status(refresh=False)
        except NoSuchJobError:
            if now - record.created_at < ENQUEUE_GRACE_S:
                return None
            return "failed", "the job disappeared from the queue (was Redis restarted without persistence?)"
        if rq_status == JobStatus.FAILED:
            detail = (rq_job.exc_info or "").strip().splitlines()
            reason = detail[-1] if detail else "unknown error"
            if "terminated unexpectedly" in reason or "AbandonedJobError" in reason:
                reason = (
                    f"the training worker died during '{record.stage or 'start-up'}' ({reason.rstrip('; ')})"
                )
            elif record.cancel_requested and "stopped" in reason.lower():
                return "canceled", "canceled: the training process was stopped; the active model is unchanged"
            return "failed", f"{reason}; the active model is unchanged"
        if rq_status in (JobStatus.STOPPED, JobStatus.CANCELED):
            return "canceled", "canceled; the active model is unchanged"
        if rq_status == JobStatus.FINISHED:
            return "failed", "the job ended without reporting a result"
        if (
            record.status == "running"
            and record.heartbeat_at is not None
            and now - record.heartbeat_at > self.heartbeat_timeout_s
        ):
            return "failed", (
                f"the training worker stopped responding during '{record.stage}' (killed or crashed; "
                f"no heartbeat for {now - record.heartbeat_at:.0f} s); the active model is unchanged"
            )
        return None
