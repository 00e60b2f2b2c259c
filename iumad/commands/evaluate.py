"""`iumad eval`: per-object I-AUROC, P-AUROC and AUPRO of a model version on a dataset's test split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iumad.commands.train import parse_objects
from model.data.datasets import list_samples
from model.errors import InputError
from model.evaluation.benchmark import mean_of, percent
from model.evaluation.evaluate import evaluate_object
from model.inference import InspectionModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset root")
    parser.add_argument("--model", type=Path, required=True, help="model version directory")
    parser.add_argument("--objects", help="comma-separated objects (default: every object the model knows)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--skip-bad", action="store_true")


def run(args: argparse.Namespace) -> int:
    model = InspectionModel.load(args.model)
    names = parse_objects(args.objects) if args.objects else [r.name for r in model.objects]
    for name in names:
        model.object(name)  # unknown -> NotFoundError, exit 2
    results: dict[str, dict[str, float | None]] = {}
    for name in names:
        samples = list_samples(args.data, name, "test", args.skip_bad)
        metrics = evaluate_object(model, name, samples)
        results[name] = {key: percent(value) for key, value in metrics.items()}
        shown = {key: "n/a" if value is None else f"{value:6.2f}" for key, value in results[name].items()}
        print(
            f"{name:<16} I-AUROC {shown['i_auroc']}  P-AUROC {shown['p_auroc']}  AUPRO {shown['aupro']}",
            file=sys.stderr,
        )
    if not results:
        raise InputError("nothing to evaluate")
    keys = ("i_auroc", "p_auroc", "aupro")
    mean = {key: mean_of([r[key] for r in results.values()]) for key in keys}
    report = {"model": model.version, "objects": results, "mean": mean}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0
