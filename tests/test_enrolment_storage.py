"""Enrolment samples on disk: archive safety, pairing, validation, durable storage (no Redis, no HTTP)."""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from model.errors import InputError
from store.archives import ArchiveTooLargeError, UnsafeArchiveError
from store.ingest import IngestLimits, ingest_archive, ingest_folder
from store.pairing import SamplesRejectedError
from store.samples import EnrolmentInputError, check_object_name, load_enrolment, split_holdout

LIMITS = IngestLimits(max_bytes=200 * 1024 * 1024, max_members=1000, max_ratio=100.0, min_samples=5)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array)
    return buffer.getvalue()


def _rgb(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)


def _depth(seed: int, size: int = 32) -> np.ndarray:
    return (0.4 + 0.01 * np.random.default_rng(seed).random((size, size))).astype(np.float32)


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return path


def _tar(path: Path, members: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as bundle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


def _mvtec_members(root: Path, prefix: str = "") -> dict[str, bytes]:
    return {
        prefix + path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "work", tmp_path / "samples"


def _nothing_stored(samples: Path) -> bool:
    return not samples.exists() or not any(path.is_file() for path in samples.rglob("*"))


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_mvtec_archive_is_paired_split_and_stored(
    synthetic_root: Path, dirs, tmp_path: Path, kind: str
) -> None:
    work, samples = dirs
    members = _mvtec_members(synthetic_root / "disc", "disc/")
    archive = tmp_path / f"disc.{kind}"
    if kind == "zip":
        _zip(archive, members)
    else:
        _tar(archive, members, "w:gz" if kind == "tar.gz" else "w")
    stored = ingest_archive(archive, work, "disc", "e1", samples, 0.25, LIMITS)
    # 6 train + 2 validation + 3 good test images; defective test images and gt masks are skipped.
    assert len(stored.train) + len(stored.holdout) == 11
    assert len(stored.holdout) == 3
    assert stored.modalities == ["rgb", "depth"] and (stored.width, stored.height) == (64, 64)
    assert any("gt" in name for name in stored.skipped) and any(
        "contamination" in name for name in stored.skipped
    )
    again = load_enrolment(samples / "disc" / "e1")
    assert [pair.key for pair in again.holdout] == [pair.key for pair in stored.holdout]
    assert all(pair.rgb.is_file() and pair.depth is not None and pair.depth.is_file() for pair in again.train)
    assert not any(path.name.startswith(".") for path in (samples / "disc").iterdir())


def test_flat_pairs_with_every_depth_format(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    folder = tmp_path / "flat"
    folder.mkdir()
    for index in range(6):
        (folder / f"{index:03d}.png").write_bytes(_png(_rgb(index)))
        depth = _depth(index)
        if index % 3 == 0:
            (folder / f"{index:03d}.tiff").write_bytes(_tiff(depth))
        elif index % 3 == 1:
            (folder / f"{index:03d}_depth.png").write_bytes(_png((depth * 1000).astype(np.uint16)))
        else:
            np.save(folder / f"{index:03d}.npy", depth)
    stored = ingest_folder(folder, "flat-part", "e1", samples, 0.0, LIMITS)
    assert len(stored.train) == 6 and not stored.holdout
    assert {pair.depth.suffix for pair in stored.train if pair.depth} == {".tiff", ".png", ".npy"}


def test_rgb_only_enrolment(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    archive = _zip(tmp_path / "rgb.zip", {f"parts/{i:03d}.png": _png(_rgb(i)) for i in range(6)})
    stored = ingest_archive(archive, work, "rgb-only", "e1", samples, 0.2, LIMITS)
    assert stored.modalities == ["rgb"] and all(pair.depth is None for pair in stored.train + stored.holdout)


def test_holdout_split_is_deterministic_and_keeps_two_for_training() -> None:
    assert split_holdout(20, 0.1, "disc") == split_holdout(20, 0.1, "disc")
    assert len(split_holdout(20, 0.1, "disc")) == 2
    assert len(split_holdout(3, 0.5, "disc")) == 1
    assert len(split_holdout(20, 0.1, "disc", minimum=8)) == 8
    assert len(split_holdout(9, 0.1, "disc", minimum=8)) == 7  # two stay to train on
    with pytest.raises(EnrolmentInputError):
        split_holdout(10, 0.9, "disc")


@pytest.mark.parametrize(
    "name", ["", "Disc", "-disc", "a" * 65, "../x", "disc name", "dïsc", "disc\n", "disc\r"]
)
def test_bad_object_names(name: str) -> None:
    with pytest.raises(EnrolmentInputError):
        check_object_name(name)


@pytest.mark.parametrize(
    "member", ["../evil.png", "ok/../../evil.png", "/etc/evil.png", "C:/evil.png", "a\\..\\evil.png"]
)
def test_path_traversal_is_refused(dirs, tmp_path: Path, member: str) -> None:
    work, samples = dirs
    members = {f"{i:03d}.png": _png(_rgb(i)) for i in range(6)} | {member: _png(_rgb(9))}
    archive = _zip(tmp_path / "evil.zip", members)
    with pytest.raises(UnsafeArchiveError):
        ingest_archive(archive, work, "evil", "e1", samples, 0.1, LIMITS)
    assert _nothing_stored(samples)
    assert not (tmp_path / "evil.png").exists()


@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_in_tar_are_refused(dirs, tmp_path: Path, link: bytes) -> None:
    work, samples = dirs
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as bundle:
        for index in range(6):
            data = _png(_rgb(index))
            info = tarfile.TarInfo(f"{index:03d}.png")
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("006.png")
        info.type = link
        info.linkname = "/etc/passwd" if link == tarfile.SYMTYPE else "000.png"
        bundle.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        ingest_archive(archive, work, "links", "e1", samples, 0.1, LIMITS)
    assert _nothing_stored(samples)


def test_symlink_in_zip_is_refused(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("000.png", _png(_rgb(0)))
        info = zipfile.ZipInfo("001.png")
        info.external_attr = 0o120777 << 16
        bundle.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        ingest_archive(archive, work, "links", "e1", samples, 0.1, LIMITS)


def test_zip_bomb_is_refused_by_ratio(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        bundle.writestr("000.png", b"\0" * (80 * 1024 * 1024))
    assert archive.stat().st_size < 1024 * 1024
    with pytest.raises(ArchiveTooLargeError, match="zip bomb"):
        ingest_archive(archive, work, "bomb", "e1", samples, 0.1, LIMITS)
    assert not (work / "extracted" / "000.png").exists()


def test_total_size_and_member_count_limits(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    archive = _zip(tmp_path / "many.zip", {f"{i:03d}.png": _png(_rgb(i)) for i in range(12)})
    small = IngestLimits(max_bytes=10**9, max_members=10, max_ratio=100.0)
    with pytest.raises(ArchiveTooLargeError, match="more than 10 files"):
        ingest_archive(archive, work, "many", "e1", samples, 0.1, small)
    tiny = IngestLimits(max_bytes=5000, max_members=1000, max_ratio=100.0)
    with pytest.raises(ArchiveTooLargeError, match="expands to more than"):
        ingest_archive(archive, tmp_path / "work2", "many", "e1", samples, 0.1, tiny)
    assert _nothing_stored(samples)


def test_empty_and_non_archives(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    empty_zip = _zip(tmp_path / "empty.zip", {})
    with pytest.raises(EnrolmentInputError, match="no files"):
        ingest_archive(empty_zip, work, "empty", "e1", samples, 0.1, LIMITS)
    zero = tmp_path / "zero.zip"
    zero.write_bytes(b"")
    with pytest.raises(EnrolmentInputError, match="empty"):
        ingest_archive(zero, tmp_path / "w2", "empty", "e1", samples, 0.1, LIMITS)
    text = tmp_path / "text.zip"
    text.write_bytes(b"not an archive at all")
    with pytest.raises(Exception, match="not a .zip"):
        ingest_archive(text, tmp_path / "w3", "empty", "e1", samples, 0.1, LIMITS)
    truncated = tmp_path / "truncated.tar.gz"
    _tar(truncated, {f"{i:03d}.png": _png(_rgb(i)) for i in range(6)}, "w:gz")
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(Exception, match="corrupt or truncated"):
        ingest_archive(truncated, tmp_path / "w4", "empty", "e1", samples, 0.1, LIMITS)
    assert _nothing_stored(samples)


def test_unpaired_files_are_listed(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    members = {f"{i:03d}.png": _png(_rgb(i)) for i in range(6)}
    members |= {f"{i:03d}.tiff": _tiff(_depth(i)) for i in range(5)}  # 005 has no depth
    members["007.tiff"] = _tiff(_depth(7))  # depth without RGB
    archive = _zip(tmp_path / "unpaired.zip", members)
    with pytest.raises(SamplesRejectedError) as caught:
        ingest_archive(archive, work, "unpaired", "e1", samples, 0.1, LIMITS)
    reasons = {reject.name: reject.reason for reject in caught.value.rejects}
    assert "without a depth file" in reasons["005.png"] and "without an RGB" in reasons["007.tiff"]
    assert _nothing_stored(samples)


def test_mixed_sizes_and_corrupt_files_are_listed(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    members = {f"{i:03d}.png": _png(_rgb(i)) for i in range(6)}
    members["006.png"] = _png(_rgb(6, size=40))
    members["007.png"] = _png(_rgb(7))[:100]
    archive = _zip(tmp_path / "mixed.zip", members)
    with pytest.raises(SamplesRejectedError) as caught:
        ingest_archive(archive, work, "mixed", "e1", samples, 0.1, LIMITS)
    reasons = {reject.name: reject.reason for reject in caught.value.rejects}
    assert "40x40" in reasons["006"] and "32x32" in reasons["006"]
    assert "corrupt" in reasons["007"] or "truncated" in reasons["007"]


def test_rgb_and_depth_of_different_sizes(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    members = {f"{i:03d}.png": _png(_rgb(i)) for i in range(6)}
    members |= {f"{i:03d}.tiff": _tiff(_depth(i, size=32 if i else 16)) for i in range(6)}
    with pytest.raises(SamplesRejectedError, match="invalid") as caught:
        ingest_archive(_zip(tmp_path / "a.zip", members), work, "sizes", "e1", samples, 0.1, LIMITS)
    assert [reject.name for reject in caught.value.rejects] == ["000"]


def test_too_few_samples(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    archive = _zip(tmp_path / "few.zip", {f"{i:03d}.png": _png(_rgb(i)) for i in range(3)})
    with pytest.raises(EnrolmentInputError, match="too few samples"):
        ingest_archive(archive, work, "few", "e1", samples, 0.1, LIMITS)
    assert _nothing_stored(samples)


def test_an_upload_too_small_to_hold_out_its_minimum_is_refused_naming_it(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    limits = dataclasses.replace(LIMITS, min_holdout=8)
    archive = _zip(tmp_path / "few.zip", {f"{i:03d}.png": _png(_rgb(i)) for i in range(15)})
    message = "15 valid pairs, at least 16 needed [(]8 held out to set the threshold, as many to train on[)]"
    with pytest.raises(EnrolmentInputError, match=message):
        ingest_archive(archive, work, "few", "e1", samples, 0.1, limits)
    assert _nothing_stored(samples)
    enough = _zip(tmp_path / "enough.zip", {f"{i:03d}.png": _png(_rgb(i)) for i in range(16)})
    stored = ingest_archive(enough, work / "second", "enough", "e2", samples, 0.1, limits)
    assert (len(stored.train), len(stored.holdout)) == (8, 8)
    everything = ingest_archive(archive, work / "third", "all-train", "e3", samples, 0.0, limits)
    assert (len(everything.train), len(everything.holdout)) == (15, 0)  # nothing held out: no minimum


def test_failed_store_leaves_no_partial_enrolment(dirs, tmp_path: Path, monkeypatch) -> None:
    work, samples = dirs
    archive = _zip(tmp_path / "ok.zip", {f"{i:03d}.png": _png(_rgb(i)) for i in range(6)})

    def broken_rename(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("model.atomic_write.os.rename", broken_rename)
    with pytest.raises(OSError):
        ingest_archive(archive, work, "ok", "e1", samples, 0.1, LIMITS)
    assert _nothing_stored(samples)
    shutil.rmtree(work)


@pytest.mark.parametrize("version", ["v1\n", "v1\r", "", "../v1", "v1/x", "v..1", "a" * 129, 3])
def test_a_version_id_is_checked_whole(version) -> None:
    from model.errors import InputError
    from store.registry import check_version_name

    with pytest.raises(InputError, match="not a valid model version id"):
        check_version_name(version)
    assert check_version_name("v20261202T000000-abc.1") == "v20261202T000000-abc.1"


def _six_pairs() -> dict[str, bytes]:
    return {f"good/rgb/{i:03d}.png": _png(_rgb(i)) for i in range(6)} | {
        f"good/xyz/{i:03d}.tiff": _tiff(_depth(i)) for i in range(6)
    }


def _tar_raw(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as bundle:
        for info, data in members:
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    return path


def _zip_with_raw_name(path: Path, placeholder: str, raw: bytes, flag_bits: int = 0) -> Path:
    """A zip with one member whose name bytes are `raw` and whose general-purpose flags have
    `flag_bits` set (both patched in after writing, in the local and the central header)."""
    with zipfile.ZipFile(path, "w") as bundle:
        for name, data in _six_pairs().items():
            bundle.writestr(name, data)
        bundle.writestr(placeholder, b"notes")
    assert len(raw) == len(placeholder)
    data = bytearray(path.read_bytes())
    name = placeholder.encode()
    for signature, name_offset, flag_offset in ((b"PK\x03\x04", 30, 6), (b"PK\x01\x02", 46, 8)):
        position = data.find(name)
        while data[position - name_offset : position - name_offset + 4] != signature:
            position = data.find(name, position + 1)
        header = position - name_offset
        flags = int.from_bytes(data[header + flag_offset : header + flag_offset + 2], "little")
        data[header + flag_offset : header + flag_offset + 2] = (flags | flag_bits).to_bytes(2, "little")
        data[position : position + len(name)] = raw
    path.write_bytes(bytes(data))
    return path


def test_a_tar_member_name_that_is_not_utf8_is_refused_by_name(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    members = [(tarfile.TarInfo(name), data) for name, data in _six_pairs().items()]
    archive = tmp_path / "names.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT, encoding="latin-1") as bundle:
        for info, data in [*members, (tarfile.TarInfo("good/notes-\xff.txt"), b"notes")]:
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))
    with pytest.raises(EnrolmentInputError, match=r"notes-\\udcff\.txt.*not valid UTF-8"):
        ingest_archive(archive, work, "names", "e1", samples, 0.25, LIMITS)
    assert _nothing_stored(samples)


@pytest.mark.parametrize(
    ("raw", "flag_bits", "error", "match"),
    [
        (b"good/\xff\xfe.txt", 0x800, EnrolmentInputError, "flagged UTF-8"),  # the flag says UTF-8; it is not
        (b"good/ab.txt", 0x1, UnsafeArchiveError, "encrypted"),
    ],
)
def test_zip_members_with_lying_names_or_encryption_are_refused(dirs, tmp_path, raw, flag_bits, error, match):
    work, samples = dirs
    archive = _zip_with_raw_name(tmp_path / "odd.zip", "good/ab.txt", raw, flag_bits)
    with pytest.raises(error, match=match):
        ingest_archive(archive, work, "odd", "e1", samples, 0.25, LIMITS)
    assert _nothing_stored(samples)


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"good/rgb": b"a file where a folder is"}, "also a f"),
        ({"good/" + "n" * 256 + ".png": b"x"}, "longer than 255 bytes"),
    ],
)
def test_a_file_and_folder_of_one_name_or_an_overlong_name_is_refused(dirs, tmp_path, kind, extra, match):
    work, samples = dirs
    members = extra | _six_pairs()  # the clashing entry first
    archive = (
        _zip(tmp_path / "clash.zip", members) if kind == "zip" else _tar(tmp_path / "clash.tar", members)
    )
    with pytest.raises(EnrolmentInputError, match=match):
        ingest_archive(archive, work, "clash", "e1", samples, 0.25, LIMITS)


@pytest.mark.parametrize("header", ["gnu", "pax"])
def test_an_oversized_extended_tar_header_is_refused_before_it_is_read(dirs, tmp_path, header) -> None:
    work, samples = dirs
    info = tarfile.TarInfo("good/rgb/" + "x" * 100_000 + ".png")
    archive = tmp_path / "long.tar"
    tar_format = tarfile.GNU_FORMAT if header == "gnu" else tarfile.PAX_FORMAT
    with tarfile.open(archive, "w", format=tar_format) as bundle:
        info.size = 1
        bundle.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UnsafeArchiveError, match="extended tar header"):
        ingest_archive(archive, work, "long", "e1", samples, 0.25, LIMITS)


def test_hidden_entries_and_folders_count_towards_the_entry_limit(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    members = {f".hidden/{i:05d}": b"" for i in range(1200)} | _six_pairs()
    archive = _tar(tmp_path / "hidden.tar.gz", members, "w:gz")
    with pytest.raises(ArchiveTooLargeError, match="more than 1000 entries"):
        ingest_archive(archive, work, "hidden", "e1", samples, 0.25, LIMITS)


def test_a_skipped_member_counts_towards_the_size_limit(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    members = {"__MACOSX/._huge": b"\0" * (4 * 1024 * 1024)} | _six_pairs()
    archive = _tar(tmp_path / "skipped.tar.gz", members, "w:gz")
    small = IngestLimits(max_bytes=2 * 1024 * 1024, max_members=1000, max_ratio=1e9, min_samples=5)
    with pytest.raises(ArchiveTooLargeError, match="expands to more than"):
        ingest_archive(archive, work, "skipped", "e1", samples, 0.25, small)


def test_archive_errors_do_not_show_the_servers_paths(dirs, tmp_path: Path) -> None:
    work, samples = dirs
    truncated = tmp_path / "secret-server-folder" / "upload.tar.gz"
    truncated.parent.mkdir()
    _tar(truncated, _six_pairs(), "w:gz")
    truncated.write_bytes(truncated.read_bytes()[:700])
    with pytest.raises(InputError, match="corrupt or truncated") as raised:
        ingest_archive(truncated, work, "t", "e1", samples, 0.25, LIMITS)
    assert str(tmp_path) not in str(raised.value)


def test_idle_leftover_folders_go_and_live_ones_stay(tmp_path: Path) -> None:
    import os
    import time

    from store.samples import remove_idle_folders

    idle, live = tmp_path / "uploads" / "idle", tmp_path / "uploads" / "live"
    for folder in (idle, live):
        (folder / "parts").mkdir(parents=True)
        (folder / "parts" / "part-000000").write_bytes(b"x")
    old = time.time() - 7200
    for path in (idle / "parts" / "part-000000", idle / "parts", idle):
        os.utime(path, (old, old))
    assert remove_idle_folders([idle, live], 3600) == [idle]
    assert not idle.exists() and live.exists()
