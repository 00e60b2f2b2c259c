"""bench/hostile_uploads.py: its payloads are what their names say, and its verdict reads the targets."""

from __future__ import annotations

import io
import tarfile
import zipfile

import tifffile

from bench.hostile_uploads import (
    MIB,
    CaseResult,
    hidden_big_member,
    hidden_entries,
    markdown,
    multi_page_tiff,
    pax_header,
    with_good_pairs,
    zip_bomb,
)


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as bundle:
        return bundle.getmembers()


def test_the_payloads_hold_what_their_names_say() -> None:
    with tifffile.TiffFile(io.BytesIO(multi_page_tiff(5))) as tiff:
        assert len(tiff.pages) == 5
    members = _members(with_good_pairs(hidden_entries(20), b"rgb", b"depth"))
    assert sum(m.name.startswith("good/.hidden-") for m in members) == 20
    assert sum(m.name.startswith("good/rgb/") for m in members) == 6
    bomb = _members(with_good_pairs(hidden_big_member(8 * MIB), b"rgb", b"depth"))
    assert bomb[0].name == "good/.cache.bin" and bomb[0].size == 8 * MIB
    assert len(_members(with_good_pairs(pax_header(1000), b"r", b"d"))[0].pax_headers["comment"]) == 1000
    zipped = zip_bomb(4 * MIB)
    with zipfile.ZipFile(io.BytesIO(zipped)) as bundle:
        assert bundle.infolist()[0].file_size == 4 * MIB
    assert len(zipped) < 64 * 1024


def _result(name: str, peak_mb: float, delay_ms: float | None) -> CaseResult:
    return CaseResult(name, "413", 413, 0.1, 1000.0, peak_mb, 0.0, 1, 100.0, delay_ms)


def test_the_verdict_judges_hostile_uploads_only_against_the_targets() -> None:
    base = (130.0, 170.0, 110.0)
    met = markdown([_result("bomb", 20.0, 30.0), _result("legitimate, big", 400.0, 190.0)], base, 1000.0, 400)
    assert "(target 200: met)" in met and "against one batch of 110 ms (met)" in met
    too_big = markdown([_result("bomb", 250.0, 30.0)], base, 1000.0, 400)
    assert "NOT met" in too_big.split("worst delay")[0]
    too_slow = markdown([_result("bomb", 20.0, 200.0)], base, 1000.0, 400)
    assert too_slow.rstrip().endswith("(NOT met).")
