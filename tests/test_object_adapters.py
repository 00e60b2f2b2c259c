"""Object adapters: each object reconstructs through its own parameters, and an incremental step trains
only the new object's, leaving every old object's path through the network bit-identical."""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import pytest
import torch
from tiny_model import TINY_CONFIG, assert_same_prediction, sample_source, train_tiny

from model.checkpoint import clone_net, load_version, save_version
from model.data.batches import InspectionInput
from model.export import export_onnx, onnx_model
from model.inference import InspectionModel
from model.network.object_adapters import ObjectAdapters
from model.network.presets import PRESETS, SHIPPED_PRESET, preset_config

ADAPTED = dataclasses.replace(TINY_CONFIG, object_adapter_rank=4)  # Mamba + IBFM + adapters


def _randomise(adapters: ObjectAdapters, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapters.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def test_a_new_adapter_starts_as_the_identity():
    residual = ObjectAdapters(8, 2, num_objects=3)
    low_rank = ObjectAdapters(8, 2, num_objects=3, out_dim=5, residual=False)
    grid = torch.randn(3, 4, 4, 8)
    objects = torch.tensor([0, 1, 2])
    torch.testing.assert_close(residual(grid, objects), grid)
    assert torch.equal(low_rank(grid, objects), torch.zeros(3, 4, 4, 5))


def test_each_sample_goes_through_its_own_objects_adapter():
    adapters = ObjectAdapters(8, 2, num_objects=3)
    _randomise(adapters, 0)
    grid = torch.randn(4, 3, 3, 8)
    objects = torch.tensor([2, 0, 1, 2])
    together = adapters(grid, objects)
    for index in range(4):
        alone = adapters(grid[index : index + 1], objects[index : index + 1])
        torch.testing.assert_close(together[index : index + 1], alone)
    assert not torch.allclose(adapters(grid[:1], torch.tensor([0])), adapters(grid[:1], torch.tensor([1])))


@pytest.mark.parametrize("residual", [True, False])
def test_a_batch_of_one_object_takes_its_adapter_alone_and_trains_only_it(residual):
    adapters = ObjectAdapters(8, 2, num_objects=3, out_dim=None if residual else 5, residual=residual)
    _randomise(adapters, 2)
    grid = torch.randn(3, 3, 3, 8)
    one_object = adapters(grid, torch.tensor([1, 1, 1]))
    mixed = adapters(torch.cat([grid, grid[:1]]), torch.tensor([1, 1, 1, 0]))  # the per-sample path
    torch.testing.assert_close(one_object, mixed[:3])
    one_object.square().sum().backward()
    trained = [index for index, adapter in enumerate(adapters.objects) if adapter.up.weight.grad is not None]
    assert trained == [1]


def test_growing_keeps_the_old_objects_adapters_and_adds_identities():
    adapters = ObjectAdapters(8, 2, num_objects=2)
    _randomise(adapters, 1)
    before = {k: v.clone() for k, v in adapters.state_dict().items()}
    adapters.grow(4)
    after = adapters.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    grid = torch.randn(2, 3, 3, 8)
    torch.testing.assert_close(adapters(grid, torch.tensor([2, 3])), grid)
    with pytest.raises(ValueError, match="never shrink"):
        adapters.grow(1)


def test_a_branch_with_adapters_refuses_to_guess_the_object():
    net = train_tiny(("alpha",), config=ADAPTED).net
    rgb = torch.zeros(1, net.rgb_mean.numel(), 4, 4)
    with pytest.raises(ValueError, match="labels"):
        net(rgb, rgb, torch.ones(1, dtype=torch.bool), torch.ones(1, dtype=torch.bool))


@pytest.fixture(scope="module")
def base_and_child():
    base = train_tiny(("alpha", "beta"), config=ADAPTED)
    parent = InspectionModel(base.net, base.manifest)
    child = train_tiny(("gamma",), parent=parent, retained_holdouts=base.holdout_features)
    return base, child


def test_an_incremental_step_leaves_every_old_object_bit_identical(base_and_child):
    base, child = base_and_child
    old, new = base.net.state_dict(), child.net.state_dict()
    grown = []
    for name, tensor in old.items():
        if new[name].shape == tensor.shape:
            assert torch.equal(new[name], tensor), f"{name} moved in the incremental step"
        else:  # a grown tensor (classifier rows, prototypes): the old objects' rows are unchanged
            assert torch.equal(new[name][: tensor.shape[0]], tensor), f"{name}: old rows moved"
            grown.append(name)
    assert grown, "the label classifiers grow"
    added = [name for name in new if name not in old]
    assert added and all(".adapters." in name and ".objects.2." in name for name in added)
    assert any(not torch.equal(new[name], torch.zeros_like(new[name])) for name in added if ".up." in name)
    parts = [InspectionInput(*sample_source(k)(), name) for k, name in ((3, "alpha"), (4, "beta"))]
    before = InspectionModel(base.net, base.manifest).predict(parts)
    after = InspectionModel(child.net, child.manifest).predict(parts)
    for ours, theirs in zip(before, after, strict=True):
        np.testing.assert_array_equal(ours.anomaly_map, theirs.anomaly_map)
        assert ours.raw_score == theirs.raw_score
    records = {r.name: r for r in child.manifest.objects}
    for record in base.manifest.objects:  # statistics, threshold, calibration summary: all kept
        assert dataclasses.asdict(records[record.name]) == dataclasses.asdict(record)


def test_every_error_map_is_computed_by_a_network_that_asks_for_no_gradient(base_and_child, tmp_path):
    """A Linear on a permuted input runs as a folded or a batched matrix product depending on whether
    its weight requires grad; on CPUs without AVX the two differ in the last bits, which once made an
    old object's calibration under its child differ from the parent's (issue 26). Trained, loaded
    and served networks all take the frozen path."""
    base, child = base_and_child
    for trained in (base.net, child.net):
        assert not any(p.requires_grad for p in trained.parameters()) and not trained.training
    served = InspectionModel(clone_net(child.net), child.manifest)
    assert not any(p.requires_grad for p in served.net.parameters())
    save_version(child.net, copy.deepcopy(child.manifest), tmp_path / "v")
    loaded, _ = load_version(tmp_path / "v")
    assert not any(p.requires_grad for p in loaded.parameters())


def test_onnx_runs_each_part_through_its_objects_adapters(base_and_child, tmp_path):
    _, child = base_and_child
    model = InspectionModel(child.net, child.manifest)
    onnx = onnx_model(model.net, model.manifest, export_onnx(model, tmp_path / "model.onnx"))
    rgb, depth = sample_source(9)()
    parts = [InspectionInput(rgb, depth, name) for name in ("alpha", "gamma", None)]
    for ours, theirs in zip(model.predict(parts), onnx.predict(parts), strict=True):
        assert_same_prediction(ours, theirs)


def test_presets_are_named_and_checked():
    assert PRESETS[SHIPPED_PRESET].object_adapter_rank > 0
    assert not PRESETS["cpu"].use_mamba and PRESETS["full"].use_mamba and PRESETS["full"].use_ibfm
    assert PRESETS["paper"].object_adapter_rank == 0
    assert preset_config("cpu", hidden_size=64).hidden_size == 64
    with pytest.raises(Exception, match="unknown network preset 'fast'.*cpu, full, paper"):
        preset_config("fast")
    with pytest.raises(Exception, match="unknown model config keys: width"):
        preset_config("cpu", width=3)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("IUMAD_NETWORK_PRESET", "fast", "IUMAD_NETWORK_PRESET: unknown network preset 'fast'"),
        ("IUMAD_NETWORK_CONFIG", '{"width": 3}', "IUMAD_NETWORK_CONFIG: .*unknown model config keys: width"),
        ("IUMAD_NETWORK_CONFIG", '{"hidden_size": "big"}', "hidden_size must be a non-negative integer"),
        (
            "IUMAD_IMAGE_SIZE",
            "320",
            'IUMAD_IMAGE_SIZE is retired: .* set IUMAD_NETWORK_CONFIG=\'{"image_size"',
        ),
    ],
)
@pytest.mark.timeout(60)  # a setting that slipped through would start the server
def test_a_bad_network_setting_stops_the_cli_at_start_up_with_exit_2(
    variable, value, message, monkeypatch, tmp_path, capsys
):
    from core.settings import get_settings
    from iumad.cli import main

    monkeypatch.setenv("IUMAD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        assert main(["serve"]) == 2
    finally:
        get_settings.cache_clear()
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert re.search(f"iumad serve: error: invalid settings: .*{message}", error)
