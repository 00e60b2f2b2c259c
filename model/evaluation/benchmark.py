"""Run an incremental protocol end to end: learn step by step, evaluate every object seen so far.

Pixel metrics are computed at network resolution (image_size x image_size): methods return maps
there, and ground truth is brought there by `resize_mask` (area average, a cell is anomalous when at
least half of it is). Results are written as `results.json` (numbers in percent) and `results.md`
(the paper-style table).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.data.datasets import list_objects, list_samples
from model.data.samples import Sample, load_samples, pixel_truth
from model.errors import InputError
from model.evaluation.metrics import MetricError, aupro, forgetting_measure, image_auroc, pixel_auroc
from model.evaluation.protocols import order_objects, protocol_steps

logger = logging.getLogger(__name__)

METRICS = ("i_auroc", "p_auroc", "aupro")
FM_METRICS = ("i_auroc", "aupro")


class IncrementalMethod(Protocol):
    """What `run_benchmark` needs from a method. `predict` receives the object name; a unified model
    may use it only for bookkeeping."""

    name: str

    def learn(self, objects: list[str], train: dict[str, list[Sample]]) -> None: ...

    def predict(self, object_name: str, samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]: ...


def _make_patchcore(image_size: int = 224, **options) -> IncrementalMethod:
    from model.evaluation.patchcore import PatchCore

    known = {
        "coreset_ratio",
        "max_coreset",
        "projection_dim",
        "blur_sigma",
        "batch_size",
        "remove_plane",
        "seed",
        "backbone",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"method patchcore does not take option(s) {', '.join(unknown)}")
    if "backbone" in options:  # a backbone name: the same frozen network ours is built on
        from model.backbone import FrozenBackbone

        options["backbone"] = FrozenBackbone(options["backbone"], strides=(8, 16))
    return PatchCore(image_size=image_size, **options)


def _make_iumad(image_size: int = 224, **options: Any) -> IncrementalMethod:
    from model.evaluation.iumad_method import IUMADMethod

    known = {
        "epochs",
        "holdout_fraction",
        "max_minutes",
        "base_max_minutes",
        "config",
        "seed",
        "anchor_weight",
        "stop_when_converged",
    }
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"method ib-iumad does not take option(s) {', '.join(unknown)}")
    return IUMADMethod(image_size=image_size, **options)


# name -> factory(image_size=..., **method_options)
METHODS: dict[str, Callable[..., IncrementalMethod]] = {"patchcore": _make_patchcore, "ib-iumad": _make_iumad}


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)
    else:
        logger.info(message)


def score_object(
    labels: np.ndarray, scores: np.ndarray, masks: np.ndarray | None, maps: np.ndarray, name: str
) -> dict[str, float | None]:
    """The three metrics as fractions; a metric that is undefined for this test set (e.g. no anomalous
    image, or no masks: `masks` None) is None and logged, never silently 0 or 100."""
    if masks is not None and maps.shape != masks.shape:
        raise InputError(f"{name}: method returned maps of shape {maps.shape}, expected {masks.shape}")
    result: dict[str, float | None] = {}
    for key, compute in (
        ("i_auroc", lambda: image_auroc(labels, scores)),
        ("p_auroc", lambda: pixel_auroc(masks, maps)),
        ("aupro", lambda: aupro(masks, maps)),
    ):
        if masks is None and key != "i_auroc":
            logger.info("%s: %s not available: its defective test images have no masks", name, key)
            result[key] = None
            continue
        try:
            result[key] = compute()
        except MetricError as error:
            logger.warning("%s: %s undefined: %s", name, key, error)
            result[key] = None
    return result


def _checked(samples: list[Sample], skip_bad: bool, problems: list[str]) -> list[Sample]:
    """With skip_bad, decode every item once so unreadable or mismatched ones are dropped up front."""
    if not skip_bad:
        return samples
    return [item.sample for item in load_samples(samples, skip_bad=True, problems=problems)]


def mean_of(values: list[float | None]) -> float | None:
    """The mean of the values that exist (a metric not available for an object does not count)."""
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), 2) if present else None


def percent(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 2)


def forgetting(
    evaluations: list[dict[str, dict]], learned_at: dict[str, int]
) -> dict[str, float | None] | None:
    """FM in percent per metric from the per-step evaluations (fractions); None with a single step."""
    if len(evaluations) < 2:
        return None
    result: dict[str, float | None] = {}
    for key in FM_METRICS:
        matrix = [
            {name: (m[key] if m[key] is not None else float("nan")) for name, m in evaluation.items()}
            for evaluation in evaluations
        ]
        try:
            result[key] = percent(forgetting_measure(matrix, learned_at))
        except MetricError as error:
            logger.warning("forgetting measure for %s undefined: %s", key, error)
            result[key] = None
    return result


def step_means(step: dict) -> dict[str, float | None]:
    return {key: mean_of([m[key] for m in step["eval"].values()]) for key in METRICS}


def results_markdown(results: dict, details: dict | None = None) -> str:
    """Paper-style table: one row per step, per object I-AUROC / AUPRO, the mean, and the FM."""
    objects = [name for step in results["steps"] for name in step["trained"]]
    lines = [
        f"# {results['method']} on protocol {results['protocol']}",
        "",
        "I-AUROC / AUPRO in percent after each step (blank: not learned yet).",
        "",
        "| Step | Trained | " + " | ".join(objects) + " | Mean |",
        "|---|---|" + "---|" * len(objects) + "---|",
    ]

    def cell(metrics: dict | None) -> str:
        if metrics is None:
            return ""
        return " / ".join("n/a" if metrics[k] is None else f"{metrics[k]:.1f}" for k in FM_METRICS)

    for index, step in enumerate(results["steps"]):
        row = [
            str(index),
            ", ".join(step["trained"]),
            *(cell(step["eval"].get(name)) for name in objects),
            cell(step_means(step)),
        ]
        lines.append("| " + " | ".join(row) + " |")
    final = step_means(results["steps"][-1])
    lines += [
        "",
        f"Final mean: I-AUROC {final['i_auroc']}, P-AUROC {final['p_auroc']}, AUPRO {final['aupro']}.",
    ]
    fm = results["fm"]
    lines.append(
        "FM: n/a (single step)." if fm is None else f"FM: I-AUROC {fm['i_auroc']}, AUPRO {fm['aupro']}."
    )
    if details:
        lines.append(
            f"Image size {details['image_size']}; total {details['seconds']} s "
            f"(per step learn/eval s: {details['step_seconds']})."
        )
        if details.get("training"):
            steps = ", ".join(str(entry.get("steps")) for entry in details["training"])
            lines.append(f"Training steps per step of the protocol: {steps}.")
        if details.get("memory_bytes") is not None:
            lines.append(f"Model memory: {details['memory_bytes'] / 2**20:.1f} MiB.")
        if details.get("skipped"):
            lines.append(f"Skipped {len(details['skipped'])} bad item(s) (see run.json).")
    return "\n".join(lines) + "\n"


def run_benchmark(
    root: Path | str,
    protocol: str,
    objects: list[str] | None = None,
    method: str = "patchcore",
    out_dir: Path | str | None = None,
    image_size: int = 224,
    skip_bad: bool = False,
    progress: bool = True,
    test_validation: bool = False,
    **method_options,
) -> dict:
    """Learn the protocol's steps in order and evaluate all objects seen so far after each step.

    Returns, and writes to out_dir/results.json, exactly {"method", "protocol", "steps": [{"trained":
    [names], "eval": {name: {"i_auroc", "p_auroc", "aupro"}}}], "fm": {"i_auroc", "aupro"} or None}
    with every metric in percent (None where undefined). Timings, model memory and skipped items go
    to out_dir/run.json, and the paper-style table to out_dir/results.md.

    `test_validation` also scores each object's validation images as good test images (no method
    ever trains on the validation split): a small test set's good images are what an image AUROC
    hinges on, one good image moving it by 1/number-of-good.
    """
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    root = Path(root)
    order = order_objects(list_objects(root), objects)
    plan = protocol_steps(protocol, order)
    data = _benchmark_data(root, order, image_size, skip_bad, test_validation, progress)
    runner = METHODS[method](image_size=image_size, **method_options)
    started = time.perf_counter()
    steps: list[dict] = []
    raw: list[dict[str, dict]] = []  # unrounded fractions, for the Forgetting Measure
    step_seconds: list[list[float]] = []
    seen: list[str] = []
    for index, step_objects in enumerate(plan):
        _say(progress, f"[step {index + 1}/{len(plan)}] learning {', '.join(step_objects)} ({method})")
        step_start = time.perf_counter()
        runner.learn(list(step_objects), {name: data.train[name] for name in step_objects})
        learn_seconds = time.perf_counter() - step_start
        seen += step_objects
        evaluation, raw_step = _evaluate_seen(runner, seen, data, progress)
        steps.append({"trained": list(step_objects), "eval": evaluation})
        raw.append(raw_step)
        step_seconds.append(
            [round(learn_seconds, 1), round(time.perf_counter() - step_start - learn_seconds, 1)]
        )
        mean = step_means(steps[-1])
        _say(progress, f"  mean I-AUROC {mean['i_auroc']}  P-AUROC {mean['p_auroc']}  AUPRO {mean['aupro']}")

    learned_at = {name: index for index, step in enumerate(plan) for name in step}
    results = {"method": method, "protocol": protocol, "steps": steps, "fm": forgetting(raw, learned_at)}
    memory = getattr(runner, "memory_bytes", None)
    details = {
        "image_size": image_size,
        "objects": order,
        "seconds": round(time.perf_counter() - started, 1),
        "step_seconds": step_seconds,
        "memory_bytes": int(memory()) if callable(memory) else None,
        "skipped": data.problems,
        "test_items": {name: len(data.test[name]) for name in order},
        "test_validation": test_validation,
        "training": getattr(runner, "history", None),  # ib-iumad: each step's steps and timings
    }
    if out_dir is not None:
        _write_results(Path(out_dir), results, details, progress)
    return results


@dataclass
class BenchmarkData:
    """Every object's samples, listed (and checked) before any training, with what scoring needs."""

    train: dict[str, list[Sample]]
    test: dict[str, list[Sample]]
    truths: dict[str, np.ndarray | None]  # per object: (N, S, S) masks at network resolution; None: no masks
    labels: dict[str, np.ndarray]  # per object: 1 = anomalous test sample
    problems: list[str]  # bad items skipped (with skip_bad)


def _benchmark_data(
    root: Path, order: list[str], image_size: int, skip_bad: bool, test_validation: bool, progress: bool
) -> BenchmarkData:
    """List everything first: a bad dataset fails before hours of training."""
    problems: list[str] = []
    train: dict[str, list[Sample]] = {}
    test: dict[str, list[Sample]] = {}
    for name in order:
        train[name] = _checked(list_samples(root, name, "train", skip_bad, problems), skip_bad, problems)
        test[name] = _checked(list_samples(root, name, "test", skip_bad, problems), skip_bad, problems)
        if test_validation:
            test[name] += _checked(
                list_samples(root, name, "validation", skip_bad, problems, allow_empty=True),
                skip_bad,
                problems,
            )
        if not train[name] or not test[name]:
            raise InputError(f"{name}: no usable train or test samples left after skipping bad items")
    if problems:
        _say(progress, f"skipped {len(problems)} bad item(s); first: {problems[0]}")
    return BenchmarkData(
        train=train,
        test=test,
        truths={name: pixel_truth(test[name], image_size) for name in order},
        labels={name: np.array([s.is_anomalous for s in test[name]], dtype=int) for name in order},
        problems=problems,
    )


def _evaluate_seen(
    runner: IncrementalMethod, seen: list[str], data: BenchmarkData, progress: bool
) -> tuple[dict[str, dict], dict[str, dict]]:
    """Every object learned so far, scored: (metrics in percent, the unrounded fractions)."""
    evaluation, raw_step = {}, {}
    for name in seen:
        scores, maps = runner.predict(name, data.test[name])
        fractions = score_object(
            data.labels[name], np.asarray(scores), data.truths[name], np.asarray(maps), name
        )
        evaluation[name] = {key: percent(value) for key, value in fractions.items()}
        raw_step[name] = fractions
        _say(
            progress,
            f"  {name:<16} I-AUROC {evaluation[name]['i_auroc']}  P-AUROC "
            f"{evaluation[name]['p_auroc']}  AUPRO {evaluation[name]['aupro']}",
        )
    return evaluation, raw_step


def _write_results(out: Path, results: dict, details: dict, progress: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "run.json").write_text(json.dumps(details, indent=2) + "\n")
    (out / "results.md").write_text(results_markdown(results, details))
    _say(progress, f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'run.json'}")
