"""The stopping rule: a step ends when its held-out normals' error stops falling, or at its budget."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tiny_model import TINY_OPTIONS, train_tiny

from model.training.convergence import ConvergenceRule, ConvergenceWatch

QUICK = ConvergenceRule(interval_steps=2, patience=2, min_steps=4, min_delta=0.5, min_anneal_steps=3)


def _watch(rule: ConvergenceRule = QUICK) -> ConvergenceWatch:
    empty = torch.zeros(0)
    return ConvergenceWatch(rule, empty, empty, empty, empty, empty)


def test_the_learning_rate_warms_up_holds_then_decays_after_convergence_or_over_the_budgets_tail():
    watch = _watch(ConvergenceRule(min_anneal_steps=10, anneal_fraction=0.1))
    assert watch.learning_rate_factor(0, 0.0, 0.05) == 0.01
    assert watch.learning_rate_factor(5, 0.025, 0.05) == pytest.approx(0.5)
    assert watch.learning_rate_factor(50, 0.5, 0.05) == 1.0  # constant, however long
    assert watch.learning_rate_factor(90, 0.9, 0.05) == pytest.approx(0.5)  # the budget's last 20 %
    watch.converged_at = 100  # anneals over max(10, 10 % of 100) = 10 steps
    assert watch.learning_rate_factor(105, 0.5, 0.05) == pytest.approx(0.5)
    assert watch.learning_rate_factor(110, 0.5, 0.05) == 0.0 and watch.finished(110)
    assert not watch.finished(109)


def test_convergence_needs_the_minimum_steps_and_patience_without_a_real_improvement(monkeypatch):
    errors = iter([1.0, 0.5, 0.499, 0.498, 0.497])
    monkeypatch.setattr("model.training.convergence.held_out_error", lambda *args: next(errors))
    watch = _watch(ConvergenceRule(patience=2, min_steps=30, min_delta=0.01))
    for step in (10, 20, 30):
        watch.measure(None, step, float(step))
    assert watch.converged_at is None  # 0.499 is not 1 % better than 0.5, but one is not patience
    watch.measure(None, 40, 40.0)
    assert watch.converged_at == 40 and not watch.due(50)
    assert [point.error for point in watch.curve] == [1.0, 0.5, 0.499, 0.498]


@pytest.mark.timeout(120)
def test_a_converged_step_ends_before_its_step_cap_and_says_why():
    options = dataclasses.replace(TINY_OPTIONS, epochs=200, stop_when_converged=True, convergence=QUICK)
    result = train_tiny(("alpha",), options=options)
    training = result.manifest.training
    assert training["stop_reason"] == "converged"
    cap = 200 * 2  # 6 - 2 held out = 4 samples, batch 4: one step an epoch... per object
    assert training["steps"] < cap
    convergence = training["convergence"]
    assert convergence["converged_at_step"] is not None and convergence["held_out_samples"] == 2
    assert [point["step"] for point in convergence["curve"]][:2] == [2, 4]
    assert all(point["error"] > 0 for point in convergence["curve"])


def test_a_step_that_keeps_improving_ends_at_its_cap_and_says_so():
    never = dataclasses.replace(QUICK, patience=10_000)
    options = dataclasses.replace(TINY_OPTIONS, epochs=3, stop_when_converged=True, convergence=never)
    training = train_tiny(("alpha",), options=options).manifest.training
    assert training["stop_reason"] == "steps" and training["convergence"]["converged_at_step"] is None
    budgeted = dataclasses.replace(TINY_OPTIONS, epochs=None, max_seconds=1.0)
    assert train_tiny(("alpha",), options=budgeted).manifest.training["stop_reason"] == "budget"


def test_without_held_out_pairs_the_step_runs_to_its_budget():
    options = dataclasses.replace(TINY_OPTIONS, epochs=2, stop_when_converged=True, convergence=QUICK)
    from tiny_model import tiny_objects

    from model.training.trainer import train_version

    objects = [dataclasses.replace(item, holdout=()) for item in tiny_objects(("alpha",))]
    training = train_version(objects, options=options).manifest.training
    assert training["stop_reason"] == "steps" and training["convergence"] is None
