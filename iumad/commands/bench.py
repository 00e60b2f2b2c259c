"""`iumad bench`: run an incremental protocol end to end and write results.json + the paper-style table."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset root (MVTec 3D-AD or Eyecandies layout)"
    )
    parser.add_argument("--protocol", required=True, help="10-0, 9-1, 6-4, 6-1x4, or any A-B / A-BxN")
    parser.add_argument("--objects", help="comma-separated objects, in step order (default: paper order)")
    parser.add_argument("--method", default="ib-iumad", help="ib-iumad (default) or patchcore")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for results.json / results.md / run.json"
    )
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable items instead of stopping")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per step (ib-iumad)")
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="training budget per incremental step (ib-iumad)"
    )
    parser.add_argument(
        "--base-max-minutes", type=float, default=None, help="training budget of the first step (ib-iumad)"
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="network preset (ib-iumad): cpu (default, what the service enrols with), full or paper",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="model config overrides on the preset as JSON (ib-iumad), e.g. '{\"use_mamba\": true}'",
    )
    parser.add_argument(
        "--test-validation",
        action="store_true",
        help="also score the validation split's images as good test images (never trained on)",
    )
    parser.add_argument(
        "--stop-when-converged",
        action="store_true",
        help="end each step when its held-out normals' error stops falling, as an enrolment does (ib-iumad)",
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--anchor-weight", type=float, default=None, help="L2 pull towards the parent in incremental steps"
    )


def parse_config_overrides(text: str | None, preset: str | None = None):
    """`--config` JSON on top of the `--preset` (default: the shipped one); unknown presets, keys and
    bad values are user errors."""
    import json

    from model.errors import InputError
    from model.network.presets import SHIPPED_PRESET, preset_config

    overrides = {}
    if text is not None:
        try:
            overrides = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"--config is not valid JSON: {error}") from None
        if not isinstance(overrides, dict):
            raise InputError("--config must be a JSON object")
    try:
        return preset_config(preset or SHIPPED_PRESET, **overrides)
    except InputError as error:
        raise InputError(f"--{'config' if text is not None else 'preset'}: {error}") from None


def run(args: argparse.Namespace) -> int:
    from model.errors import InputError
    from model.evaluation.benchmark import METHODS, results_markdown, run_benchmark

    if args.method not in METHODS:
        raise InputError(f"unknown method {args.method!r}; available: {', '.join(sorted(METHODS))}")
    objects = [name.strip() for name in args.objects.split(",")] if args.objects else None
    options: dict = {}
    for key in ("epochs", "max_minutes", "base_max_minutes", "seed", "anchor_weight"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    for key in ("epochs", "max_minutes", "base_max_minutes"):
        if key in options and not options[key] > 0:
            raise InputError(f"--{key.replace('_', '-')} must be positive, got {options[key]}")
    if options.get("anchor_weight", 0.0) < 0:
        raise InputError(f"--anchor-weight must not be negative, got {options['anchor_weight']}")
    if args.stop_when_converged:
        options["stop_when_converged"] = True
    if args.config is not None or args.preset is not None:
        options["config"] = parse_config_overrides(args.config, args.preset)
    results = run_benchmark(
        args.data,
        args.protocol,
        objects=objects,
        method=args.method,
        out_dir=args.out,
        image_size=args.image_size,
        skip_bad=args.skip_bad,
        progress=True,
        test_validation=args.test_validation,
        **options,
    )
    print(results_markdown(results))
    return 0
