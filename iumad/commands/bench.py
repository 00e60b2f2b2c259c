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
        "--config",
        default=None,
        help='model config overrides as JSON (ib-iumad), e.g. \'{"use_mamba": false, "fusion": "add"}\'',
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--anchor-weight", type=float, default=None, help="L2 pull towards the parent in incremental steps"
    )


def parse_config_overrides(text: str):
    """`--config` JSON on top of the default ModelConfig; unknown keys and bad values are user errors."""
    import json

    from model.errors import InputError
    from model.network.config import ModelConfig

    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"--config is not valid JSON: {error}") from None
    if not isinstance(overrides, dict):
        raise InputError("--config must be a JSON object")
    try:
        return ModelConfig.from_dict({**ModelConfig().to_dict(), **overrides})
    except (TypeError, ValueError) as error:
        raise InputError(f"--config: {error}") from None


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
    if args.config is not None:
        options["config"] = parse_config_overrides(args.config)
    results = run_benchmark(
        args.data,
        args.protocol,
        objects=objects,
        method=args.method,
        out_dir=args.out,
        image_size=args.image_size,
        skip_bad=args.skip_bad,
        progress=True,
        **options,
    )
    print(results_markdown(results))
    return 0
