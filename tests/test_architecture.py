"""The package boundaries of docs/ARCHITECTURE.md, checked on every module's imports (also those
inside functions): the gateway never reaches into what runs only in a worker, and the shared state
depends on neither side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("bench", "iumad", "model", "service", "store", "workers")
# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "model": set(),
    "store": {"iumad", "model"},
    "service": {"iumad", "model", "store"},
    "workers": {"iumad", "model", "store"},
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
