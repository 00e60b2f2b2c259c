"""The enrolment job's contract between gateway and worker: one typed, versioned record."""

from __future__ import annotations

import json

import pytest

from model.checkpoint import DEFAULT_FALSE_REJECT_RATE
from model.errors import InputError
from store.job_spec import SPEC_VERSION, EnrolmentSpec, RefinementSpec
from store.job_store import JobRecord


def test_a_spec_survives_the_json_trip_through_the_queue() -> None:
    spec = EnrolmentSpec("disc", "abc123", max_minutes=5.0, replace=True, holdout_fraction=0.2)
    wire = json.loads(json.dumps(spec.to_dict()))
    assert wire["spec_version"] == SPEC_VERSION
    assert EnrolmentSpec.from_dict(wire) == spec
    assert spec.enrolment == "disc/abc123"
    assert spec.target_false_reject_rate == DEFAULT_FALSE_REJECT_RATE


def test_a_worker_refuses_a_spec_of_another_version() -> None:
    wire = EnrolmentSpec("disc", "abc123", max_minutes=5.0).to_dict() | {"spec_version": SPEC_VERSION + 1}
    with pytest.raises(InputError, match="upgrade this worker"):
        EnrolmentSpec.from_dict(wire)


def test_a_job_queued_before_the_version_field_is_read_as_version_1() -> None:
    legacy = {
        "object": "ring",
        "enrolment": "ring/0f0f",
        "replace": False,
        "holdout_fraction": 0.1,
        "target_false_reject_rate": 0.02,
        "max_minutes": 3.0,
    }
    spec = EnrolmentSpec.from_dict(legacy)
    assert (spec.object, spec.enrolment_id, spec.enrolment) == ("ring", "0f0f", "ring/0f0f")
    assert (spec.max_minutes, spec.target_false_reject_rate, spec.retry_of) == (3.0, 0.02, None)


def test_a_retry_keeps_the_failed_jobs_options_and_names_it() -> None:
    first = EnrolmentSpec("disc", "old", max_minutes=2.0, replace=True, target_false_reject_rate=0.05)
    failed = JobRecord(id="old", object="disc", status="failed", replace=True, options=first.options())
    retry = EnrolmentSpec.retrying(failed, "new")
    assert (retry.enrolment_id, retry.retry_of, retry.replace) == ("new", "old", True)
    assert (retry.max_minutes, retry.target_false_reject_rate) == (2.0, 0.05)
    assert retry.options()["retry_of"] == "old" and "retry_of" not in first.options()


def test_a_refinement_spec_survives_the_json_trip_and_names_its_corrections() -> None:
    spec = RefinementSpec("disc", "job1", max_minutes=3.0, corrections=("r1", "r2"))
    wire = json.loads(json.dumps(spec.to_dict()))
    assert wire["corrections"] == ["r1", "r2"] and RefinementSpec.from_dict(wire) == spec
    assert spec.options() == {"max_minutes": 3.0, "corrections": 2}
    with pytest.raises(InputError, match="upgrade this worker"):
        RefinementSpec.from_dict(wire | {"spec_version": SPEC_VERSION + 1})
