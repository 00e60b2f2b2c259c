"""Base and incremental steps: the loss falls, labels keep their index, calibration meets its target."""

import time

import numpy as np
import pytest
import torch
from tiny_model import TINY_CONFIG, TINY_OPTIONS, sample_source, tiny_objects, train_tiny

from model.data.batches import InspectionInput
from model.errors import ConflictError, InputError
from model.inference import InspectionModel
from model.training.calibration import threshold_for_false_reject_rate
from model.training.features import ObjectSamples
from model.training.loop import _learning_rate_factor
from model.training.options import DEFAULT_EPOCHS, TrainingCancelled, TrainingOptions
from model.training.trainer import train_version


@pytest.fixture(scope="module")
def base():
    return train_tiny(("alpha", "beta"), options=TrainingOptions(epochs=8, batch_size=4))


def test_a_short_training_run_lowers_the_loss(base):
    curve = base.manifest.training["curve"]
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert base.manifest.training["kind"] == "base"


def test_base_step_records_objects_modalities_and_thresholds(base):
    records = {r.name: r for r in base.manifest.objects}
    assert [records["alpha"].label, records["beta"].label] == [0, 1]
    assert records["alpha"].modalities == ["rgb", "depth"]
    assert all(r.threshold is not None and r.calibration["on"] == "holdout" for r in records.values())


def test_incremental_step_grows_the_classifier_and_keeps_old_indices(base):
    parent = InspectionModel(base.net, base.manifest)
    child = train_tiny(("gamma",), parent=parent, retained_holdouts=base.holdout_features)
    labels = {r.name: r.label for r in child.manifest.objects}
    assert labels == {"alpha": 0, "beta": 1, "gamma": 2}
    assert child.net.num_classes == 3
    assert child.manifest.parent == base.manifest.version
    assert child.manifest.training["kind"] == "incremental"
    assert child.manifest.object("alpha").calibration["recalibrated_in"] == child.manifest.version
    # The parent is not modified by its child's training.
    assert parent.net.num_classes == 2


def test_old_objects_are_still_predicted_after_an_incremental_step(base):
    """Only the new object's samples are seen in an incremental step; predicting the old ones must not
    collapse onto the newest object (what a learned head trained on one label does)."""
    parent = InspectionModel(base.net, base.manifest)
    blue = ObjectSamples("gamma", [sample_source(300 + k, tint=(60, 60, 150)) for k in range(6)])
    child = train_version([blue], parent=parent, options=TINY_OPTIONS)
    model = InspectionModel(child.net, child.manifest)
    parts = {
        "alpha": sample_source(900, tint=(150, 60, 60))(),
        "beta": sample_source(901, tint=(60, 150, 60))(),
        "gamma": sample_source(902, tint=(60, 60, 150))(),
    }
    results = model.predict([InspectionInput(rgb, depth) for rgb, depth in parts.values()])
    assert [r.object for r in results] == list(parts)
    assert all(r.object_source == "predicted" for r in results)


def test_incremental_step_refuses_an_enrolled_name(base):
    parent = InspectionModel(base.net, base.manifest)
    with pytest.raises(ConflictError, match="alpha"):
        train_version(tiny_objects(("alpha",)), parent=parent, options=TINY_OPTIONS)


def test_rgb_only_object_and_inspection_without_depth(base):
    parent = InspectionModel(base.net, base.manifest)
    child = train_tiny(("flat",), parent=parent, depth=False)
    model = InspectionModel(child.net, child.manifest)
    assert child.manifest.object("flat").modalities == ["rgb"]
    rgb, depth = sample_source(7)()
    results = model.predict(
        [
            InspectionInput(rgb, depth, "flat"),
            InspectionInput(rgb, None, "alpha"),
            InspectionInput(rgb, depth, "alpha"),
        ]
    )
    assert [r.modalities for r in results] == [["rgb"], ["rgb"], ["rgb", "depth"]]
    assert all(np.isfinite(r.raw_score) for r in results)


def test_cancellation_between_batches():
    calls = {"n": 0}

    def should_cancel():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(TrainingCancelled):
        train_tiny(("alpha",), should_cancel=should_cancel)


def test_progress_reaches_one_through_the_stages():
    seen = []
    train_tiny(("alpha",), progress=lambda fraction, stage, details: seen.append((fraction, stage)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {"features", "training", "calibration"} <= {s for _, s in seen}


def test_bad_training_input_is_named():
    with pytest.raises(InputError, match="at least 2"):
        train_version([ObjectSamples("lonely", [sample_source(1)])], config=TINY_CONFIG, options=TINY_OPTIONS)
    with pytest.raises(InputError, match="duplicate"):
        train_version(tiny_objects(("a",)) + tiny_objects(("a",)), config=TINY_CONFIG, options=TINY_OPTIONS)

    def five_channels():
        return np.zeros((80, 80, 5), np.uint8), None

    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        train_version(
            [ObjectSamples("odd", [five_channels, five_channels])], config=TINY_CONFIG, options=TINY_OPTIONS
        )


def test_time_budget_shrinks_the_schedule():
    result = train_tiny(("alpha",), options=TrainingOptions(epochs=500, batch_size=2, max_seconds=0.5))
    assert result.manifest.training["steps"] < 500 * 3


class StepClock:
    """A fake `time.perf_counter` that advances a fixed amount per reading: budgets become step counts."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_a_time_budget_without_an_epoch_cap_is_used_whole(monkeypatch):
    """The schedule runs on elapsed time: the loop trains until its budget is spent, not to an epoch count."""
    from model.training import trainer

    monkeypatch.setattr(trainer.time, "perf_counter", StepClock(0.01))
    result = train_tiny(("alpha",), options=TrainingOptions(batch_size=2, max_seconds=3.0))
    steps = result.manifest.training["steps"]
    assert steps > DEFAULT_EPOCHS * 3  # the no-budget default of this tiny set (6 samples, batch 2)
    assert result.manifest.training["seconds"] == pytest.approx(3.0, abs=0.1)


def test_a_deadline_ends_the_loop_in_time(monkeypatch):
    from model.training import trainer

    monkeypatch.setattr(trainer.time, "perf_counter", StepClock(0.01))
    result = train_tiny(("alpha",), options=TrainingOptions(batch_size=2, finish_by=time.time() + 1.0))
    assert 0 < result.manifest.training["seconds"] <= 1.05


def test_the_learning_rate_warms_up_then_decays_to_zero():
    factors = [_learning_rate_factor(p / 100, 0.05) for p in range(101)]
    assert factors[0] == pytest.approx(0.01) and max(factors) == pytest.approx(1.0)
    peak = factors.index(max(factors))
    assert peak == 5 and factors[peak:] == sorted(factors[peak:], reverse=True)
    assert factors[-1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("count,target,expected", [(10, 0.01, 9.0), (200, 0.01, 197.0), (100, 0.1, 89.0)])
def test_threshold_meets_the_false_reject_target(count, target, expected):
    scores = np.arange(count, dtype=float)
    threshold = threshold_for_false_reject_rate(scores, target)
    assert threshold == expected
    assert np.mean(scores > threshold) <= target


def test_inference_is_deterministic_and_batch_independent(base):
    model = InspectionModel(base.net, base.manifest)
    items = [InspectionInput(*sample_source(k)(), None) for k in range(3)]
    together = model.predict(items)
    alone = [model.predict([item])[0] for item in items]
    for a, b in zip(together, alone, strict=True):
        assert a.object == b.object
        assert a.raw_score == pytest.approx(b.raw_score, abs=1e-4)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-4, rtol=1e-4)
    # Float32 noise of batched convolutions, divided by the object's normal score spread: 1e-4 of the map.
    torch.testing.assert_close(
        torch.tensor(together[0].anomaly_map),
        torch.tensor(model.predict(items[:1])[0].anomaly_map),
        atol=1e-4,
        rtol=1e-4,
    )


def test_a_threshold_is_never_set_from_scores_that_do_not_vary():
    """Two held-out pairs, each standardised by the statistics of both, score 1/sqrt(2) whatever the
    parts look like (seen in an enrolment of 16 pairs): calibration refuses instead of setting it."""
    from model.errors import InputError
    from model.training.calibration import calibrate_object

    generator = torch.Generator().manual_seed(0)
    errors = torch.rand(2, 2, 4, 4, generator=generator)
    errors[0, 0] += 1.0  # the first pair is the worse in RGB, the second in depth: each scores +1/sqrt(2)
    errors[1, 1] += 1.0  # in one modality and -1/sqrt(2) in the other, and the maximum is taken
    weights = torch.ones(2, 2, 4, 4)
    with pytest.raises(InputError, match="2 held-out normal pairs all score 0.707107"):
        calibrate_object(errors, weights, 64, 4.0, 16, 0.01)
    four = calibrate_object(
        torch.rand(4, 2, 4, 4, generator=generator), torch.ones(4, 2, 4, 4), 64, 4.0, 16, 0.01
    )
    assert four.summary["score_max"] > four.summary["score_min"]
