"""The package boundaries of docs/ARCHITECTURE.md, checked on every module's imports (also those
inside functions): the gateway never reaches into what runs only in a worker, and the shared state
depends on neither side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("bench", "core", "iumad", "model", "service", "store", "workers")
# package -> the packages of ours it may import (besides itself). Nothing imports the CLI (`iumad`):
# settings and names live on the ground floor (`core`), beside the model.
ALLOWED = {
    "model": set(),
    "core": {"model"},
    "store": {"core", "model"},
    "service": {"core", "model", "store"},
    "workers": {"core", "model", "store"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(OURS)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package: str) -> None:
    broken = {
        str(path.relative_to(ROOT)): sorted(_imports(path) - ALLOWED[package] - {package})
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {name: bad for name, bad in broken.items() if bad} == {}


def test_the_rule_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "route.py"
    module.write_text("def f():\n    from workers.jobs import enroll_object\n")
    assert _imports(module) - ALLOWED["service"] - {"service"} == {"workers"}


def test_the_release_version_is_written_once_for_the_package_and_the_api() -> None:
    import tomllib

    from core import __version__

    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"] == __version__


def test_the_queued_job_names_are_the_workers_entry_points() -> None:
    from store.queue import ENROLMENT_JOB, REFINEMENT_JOB
    from workers.jobs import enroll_object, refine_object

    assert f"{enroll_object.__module__}.{enroll_object.__qualname__}" == ENROLMENT_JOB
    assert f"{refine_object.__module__}.{refine_object.__qualname__}" == REFINEMENT_JOB


def test_error_kinds_carry_no_http_status_and_the_gateway_maps_every_kind() -> None:
    """`model` and `store` promise no HTTP; the gateway decides each kind's status, a new kind
    answering as its nearest listed base class."""
    from model.errors import CheckpointError, InputError, IumadError
    from model.evaluation.metrics import MetricError
    from service.errors import NothingEnrolledError, QueueFullError, http_status_of
    from store.archives import ArchiveTooLargeError
    from store.registry import StaleActivationError

    assert not any(hasattr(kind, "http_status") for kind in (IumadError, InputError, ArchiveTooLargeError))
    answers = [
        http_status_of(error("x"))
        for error in (InputError, MetricError, ArchiveTooLargeError, CheckpointError, StaleActivationError)
    ]
    assert answers == [400, 400, 413, 422, 409]
    assert (http_status_of(NothingEnrolledError()), http_status_of(QueueFullError("full"))) == (409, 503)
