"""`iumad train`: a base step (no --init) or an incremental step (--init VERSION_DIR) from a dataset."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from model.checkpoint import save_version
from model.data.datasets import list_samples
from model.errors import InputError
from model.inference import InspectionModel
from model.network.presets import SHIPPED_PRESET, preset_config
from model.training.features import ObjectSamples
from model.training.options import TrainingOptions
from model.training.trainer import sample_sources, train_version


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset root (MVTec 3D-AD or Eyecandies layout)"
    )
    parser.add_argument("--objects", required=True, help="comma-separated object names to learn in this step")
    parser.add_argument("--out", type=Path, required=True, help="directory of the new model version")
    parser.add_argument("--init", type=Path, help="parent version directory (incremental step)")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--max-minutes", type=float, help="training-loop time budget")
    parser.add_argument(
        "--preset", help="network preset of a base step: cpu (default, as the service enrols), full, paper"
    )
    parser.add_argument("--config", type=Path, help="model config JSON overrides on the preset (base step)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable items instead of stopping")


def parse_objects(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InputError("--objects names no object")
    return names


def progress_printer(prefix: str):
    def report(fraction: float, stage: str, details: dict) -> None:
        bar = "#" * int(30 * fraction)
        loss = f" loss {details['loss']:.4f}" if "loss" in details else ""
        print(
            f"\r{prefix} [{bar:<30}] {100 * fraction:5.1f}% {stage:<12}{loss}",
            end="",
            file=sys.stderr,
            flush=True,
        )
        if fraction >= 1.0:
            print(file=sys.stderr)

    return report


def run(args: argparse.Namespace) -> int:
    names = parse_objects(args.objects)
    if args.out.exists():
        raise InputError(f"{args.out} already exists; choose a new directory for the new version")
    parent = InspectionModel.load(args.init) if args.init else None
    config = None
    if args.config or args.preset:
        if parent is not None:
            raise InputError(
                "--config and --preset apply to a base step only; an incremental step keeps its "
                "parent's config"
            )
        overrides = {}
        if args.config:
            try:
                overrides = json.loads(args.config.read_text())
            except (OSError, ValueError) as error:
                raise InputError(f"cannot read model config {args.config}: {error}") from error
            if not isinstance(overrides, dict):
                raise InputError(f"model config {args.config} must hold a JSON object")
        config = preset_config(args.preset or SHIPPED_PRESET, **overrides)
    options = TrainingOptions()
    if args.epochs is not None:
        options = dataclasses.replace(options, epochs=args.epochs)
    if args.max_minutes is not None:
        options = dataclasses.replace(options, max_seconds=60 * args.max_minutes)
    problems: list[str] = []
    objects = []
    for name in names:
        train = list_samples(args.data, name, "train", args.skip_bad, problems)
        try:
            holdout = list_samples(args.data, name, "validation", args.skip_bad, problems)
        except InputError:
            holdout = []  # no validation split: calibrate on training samples (recorded in the manifest)
        objects.append(ObjectSamples(name, sample_sources(train), sample_sources(holdout)))
    if problems:
        print(f"skipped {len(problems)} bad items", file=sys.stderr)
    result = train_version(
        objects,
        parent=parent,
        config=config,
        options=options,
        progress=progress_printer("train"),
        version=args.out.name,
    )
    save_version(result.net, result.manifest, args.out)
    summary = {
        "version": result.manifest.version,
        "out": str(args.out),
        "parent": result.manifest.parent,
        "objects": [r.name for r in result.manifest.objects],
        **result.manifest.training["timings"],
    }
    print(json.dumps(summary, indent=2))
    return 0
