"""The forgetting guard: old objects' pasted defects scored under parent and candidate; with object
adapters a few bit-identical parts settle an object, anything else gets the full comparison."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_model import TINY_CONFIG, sample_source, train_tiny

from model.checkpoint import clone_net
from model.inference import InspectionModel
from workers.forgetting_guard import run_forgetting_guard

ADAPTED = dataclasses.replace(TINY_CONFIG, object_adapter_rank=4)


def _sources(count: int) -> dict[str, tuple[list, str]]:
    return {"alpha": ([sample_source(700 + k, tint=(150, 60, 60)) for k in range(count)], "holdout")}


@pytest.fixture(scope="module")
def adapted():
    base = train_tiny(("alpha", "beta"), config=ADAPTED)
    parent = InspectionModel(base.net, base.manifest)
    child = train_tiny(("gamma",), parent=parent)
    return parent, InspectionModel(child.net, child.manifest)


def test_a_step_with_object_adapters_is_settled_by_a_few_identical_parts(adapted):
    parent, candidate = adapted
    report = run_forgetting_guard(parent, candidate, _sources(10), margin=0.05, identity_samples=3)
    (alpha,) = report.objects
    assert alpha.identical_scores and alpha.normals == 3 and alpha.defects == 6 and alpha.drop == 0.0
    assert report.passed and set(report.skipped) == {"beta"}


def test_an_old_object_whose_path_moved_gets_the_full_comparison(adapted):
    parent, candidate = adapted
    tampered = clone_net(candidate.net)
    with torch.no_grad():
        tampered.branches["rgb"].adapters[1].objects[0].up.bias.add_(0.5)  # alpha's own adapter
    moved = InspectionModel(tampered, candidate.manifest)
    report = run_forgetting_guard(parent, moved, _sources(10), margin=0.05, identity_samples=3)
    (alpha,) = report.objects
    assert not alpha.identical_scores and alpha.normals == 10 and alpha.defects == 20


def test_without_object_adapters_every_object_gets_the_full_comparison():
    base = train_tiny(("alpha", "beta"))
    parent = InspectionModel(base.net, base.manifest)
    child = InspectionModel(*(lambda r: (r.net, r.manifest))(train_tiny(("gamma",), parent=parent)))
    report = run_forgetting_guard(parent, child, _sources(5), margin=1.0, identity_samples=3)
    assert report.objects[0].normals == 5 and not report.objects[0].identical_scores
