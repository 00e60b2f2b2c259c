"""Model versions: bit-exact round trip, atomic writes, and clear refusals of bad checkpoints."""

import json

import pytest
import torch
from tiny_model import train_tiny

from model.checkpoint import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    load_version,
    read_manifest,
    save_version,
)
from model.errors import CheckpointError


@pytest.fixture(scope="module")
def trained():
    return train_tiny(("alpha", "beta"))


def test_round_trip_is_bit_exact(trained, tmp_path):
    directory = save_version(trained.net, trained.manifest, tmp_path / trained.manifest.version)
    net, manifest = load_version(directory)
    original = trained.net.state_dict()
    loaded = net.state_dict()
    assert original.keys() == loaded.keys()
    assert all(torch.equal(original[k], loaded[k]) for k in original)
    assert manifest.to_dict() == trained.manifest.to_dict()
    data = json.loads((directory / MANIFEST_FILE).read_text())
    assert data["format_version"] == FORMAT_VERSION and len(data["weights_sha256"]) == 64
    assert [o["name"] for o in data["objects"]] == ["alpha", "beta"]


def test_no_temporary_directory_is_left_and_versions_are_never_overwritten(trained, tmp_path):
    target = tmp_path / "v1"
    save_version(trained.net, trained.manifest, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]
    with pytest.raises(CheckpointError, match="already exists"):
        save_version(trained.net, trained.manifest, target)


def test_a_failed_write_leaves_nothing_a_loader_would_pick_up(trained, tmp_path, monkeypatch):
    import model.checkpoint as checkpoint

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError):
        save_version(trained.net, trained.manifest, tmp_path / "v2")
    assert list(tmp_path.iterdir()) == []


def test_corrupt_weights_are_refused_by_sha256(trained, tmp_path):
    directory = save_version(trained.net, trained.manifest, tmp_path / "v")
    weights = directory / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_version(directory)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CheckpointError):
        load_version(directory)


def test_unknown_format_and_foreign_directories_are_refused(trained, tmp_path):
    directory = save_version(trained.net, trained.manifest, tmp_path / "v")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["format_version"] = 99
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format version 99"):
        read_manifest(directory)
    (tmp_path / "foreign").mkdir()
    with pytest.raises(CheckpointError, match="not a model version"):
        load_version(tmp_path / "foreign")
    (tmp_path / "foreign" / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_version(tmp_path / "foreign")


def test_weights_that_do_not_fit_the_config_are_refused(trained, tmp_path):
    directory = save_version(trained.net, trained.manifest, tmp_path / "v")
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    manifest["config"]["hidden_size"] = 48
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_version(directory)
