"""A refinement: one object learns from its corrections; every other object stays bit-identical."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_model import TINY_CONFIG, TINY_OPTIONS, sample_source, tiny_objects, train_tiny

from model.data.batches import InspectionInput
from model.errors import ConflictError
from model.inference import InspectionModel
from model.training.features import FeatureSet
from model.training.refinement import refine_version, split_marked, with_share

ADAPTED = dataclasses.replace(TINY_CONFIG, object_adapter_rank=4)


def _defect(seed: int):
    def load():
        rgb, depth = sample_source(seed, tint=(150, 60, 60))()
        rgb[20:50, 20:50] = 255
        return rgb, depth

    return load


@pytest.fixture(scope="module")
def refined():
    base = train_tiny(("alpha", "beta"), config=ADAPTED)
    parent = InspectionModel(base.net, base.manifest)
    alpha = tiny_objects(("alpha", "beta"))[0]
    marked_good = [sample_source(900 + k, tint=(150, 60, 60)) for k in range(3)]
    result = refine_version(parent, "alpha", alpha, marked_good, [_defect(950), _defect(951)], TINY_OPTIONS)
    return parent, result, marked_good


def test_every_other_object_keeps_its_weights_record_and_maps_bit_for_bit(refined):
    parent, result, _ = refined
    old, new = parent.net.state_dict(), result.net.state_dict()
    moved = [name for name in old if not torch.equal(old[name], new[name])]
    assert moved and all(".adapters." in name and ".objects.0." in name for name in moved)
    assert result.manifest.object("beta") == parent.object("beta")
    part = [InspectionInput(*sample_source(7, tint=(60, 150, 60))(), "beta")]
    child = InspectionModel(result.net, result.manifest)
    before, after = parent.predict(part)[0], child.predict(part)[0]
    assert before.raw_score == after.raw_score
    assert np.array_equal(before.anomaly_map, after.anomaly_map)


def test_the_refined_object_is_recalibrated_on_its_held_out_normals_and_measured(refined):
    parent, result, marked_good = refined
    record = result.manifest.object("alpha")
    assert (
        record.calibration["on"] == "holdout" and record.calibration["refined_in"] == result.manifest.version
    )
    # Half of the parts marked good calibrate (every second one), the rest train.
    assert record.train_samples == parent.object("alpha").train_samples + 2
    assert record.holdout_samples == parent.object("alpha").holdout_samples + 1
    assert record.threshold != parent.object("alpha").threshold
    training = result.manifest.training
    assert training["kind"] == "refinement" and training["refined_object"] == "alpha"
    assert training["marked_good"] == 3 and training["marked_good_calibrating"] == 1
    assert training["defects"] == 2
    for rates in (result.before, result.after):
        assert len(rates.good_scores) == 3 and len(rates.defect_scores) == 2
        assert 0 <= rates.false_reject_rate <= 1 and 0 <= rates.miss_rate <= 1
    assert result.manifest.metrics["refinement"]["after"]["threshold"] == record.threshold


def test_a_network_without_object_adapters_cannot_refine_one_object():
    base = train_tiny(("alpha",), config=TINY_CONFIG)
    parent = InspectionModel(base.net, base.manifest)
    with pytest.raises(ConflictError, match="object adapters"):
        refine_version(parent, "alpha", tiny_objects(("alpha",))[0], [], [], TINY_OPTIONS)


def test_the_parts_marked_good_are_split_between_training_and_calibration_and_weighted():
    parts = list(range(5))
    train, calibrate = split_marked(parts, 0.5)
    assert train == [0, 2, 4] and calibrate == [1, 3]
    assert split_marked(parts, 0.0) == (parts, []) and split_marked([7], 0.5) == ([7], [])
    features = FeatureSet(
        torch.arange(10.0).view(10, 1, 1, 1),
        torch.zeros(10, 1, 1, 1),
        torch.ones(10, dtype=bool),
        torch.ones(10, 1, 1),
    )
    weighted = with_share(features, 2, 0.25)  # 8 others, 2 marked good: repeated to a quarter of the set
    values = weighted.rgb.flatten().tolist()
    assert values[:8] == list(range(8)) and sorted(set(values[8:])) == [8.0, 9.0]
    assert abs(len(values[8:]) / len(values) - 0.25) < 0.1
