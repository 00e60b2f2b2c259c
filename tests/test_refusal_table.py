"""docs/API.md's table of refused input names a real test on every row, so it cannot drift from the suite."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Refused input"
SHORTHANDS = {
    "E": "tests/test_service_errors.py::test_bad_input_gets_a_clear_4xx",
    "D": "tests/test_decode.py",
    "H": "tests/test_enrolment_http.py",
    "S": "tests/test_enrolment_storage.py",
}
REFERENCE = re.compile(r"`(E|D|H|S|tests/[\w/]+\.py)(?:::(\w+))?((?:\[[^\]]+\])?)`")
CASE_ONLY = re.compile(r"`\[([^\]]+)\]`")


def _rows() -> list[str]:
    text = (ROOT / "docs/API.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    return [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| input")]


def _references(row: str) -> tuple[list[tuple[Path, str, str]], list[str]]:
    """(file, test function, case id) named in a row's test cell, and bare `[case]` ids."""
    cell = row.rsplit("|", 2)[-2]
    named = []
    for prefix, function, case in REFERENCE.findall(cell):
        target = SHORTHANDS.get(prefix, prefix)
        path, _, implied = target.partition("::")
        named.append((ROOT / path, function or implied, case.strip("[]")))
    return named, CASE_ONLY.findall(cell)


def test_every_bad_input_the_suite_sends_is_in_the_table():
    from test_service_errors import BAD_INPUTS

    documented = "\n".join(_rows())
    missing = [case[0] for case in BAD_INPUTS if f"E[{case[0]}]" not in documented]
    assert not missing, f"docs/API.md's refusal table does not list {missing}"


def test_every_row_names_a_test_that_exists_with_its_case_id():
    last: tuple[Path, str] | None = None
    for row in _rows():
        named, bare_cases = _references(row)
        same_as_above = row.rsplit("|", 2)[-2].strip().startswith("same")
        assert named or same_as_above, f"row names no test: {row}"
        for path, function, case in named:
            source = path.read_text()
            if function:
                assert re.search(rf"^def {function}\(", source, re.M), f"{path.name} has no {function}: {row}"
                last = (path, function)
            if case:
                assert f'"{case}"' in source, f"{path.name} has no case {case!r}: {row}"
        for case in bare_cases:
            assert last is not None, row
            assert f'"{case}"' in last[0].read_text(), f"{last[0].name} has no case {case!r}: {row}"
