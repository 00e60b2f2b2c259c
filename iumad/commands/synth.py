"""`iumad synth`: write the synthetic RGB-D defect benchmark in the MVTec 3D-AD layout."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument("--objects", type=int, default=10, help="number of object types (10 distinct)")
    parser.add_argument("--size", type=int, default=224, help="image size in pixels")
    parser.add_argument("--train", type=int, default=200, help="normal training images per object")
    parser.add_argument(
        "--validation",
        type=int,
        default=None,
        help="normal validation images per object (default: 10%% of --train)",
    )
    parser.add_argument("--test", type=int, default=40, help="test images per object, about half defective")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="also save a picture of the samples here")


def _progress_line(start: float) -> Callable[[int, int], None]:
    def report(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            print(
                f"\rsynth: {done}/{total} images, {time.perf_counter() - start:.0f} s",
                end="",
                file=sys.stderr,
                flush=True,
            )
            if done == total:
                print(file=sys.stderr)

    return report


def run(args: argparse.Namespace) -> int:
    from model.data.synthetic import render_sample_grid, write_synthetic_dataset

    validation = args.validation if args.validation is not None else max(1, args.train // 10)
    start = time.perf_counter()
    names = write_synthetic_dataset(
        args.out,
        objects=args.objects,
        size=args.size,
        n_train=args.train,
        n_validation=validation,
        n_test=args.test,
        seed=args.seed,
        progress=_progress_line(start),
    )
    print(
        f"wrote {len(names)} objects ({', '.join(names)}) to {args.out} in {time.perf_counter() - start:.1f} s"
    )
    if args.grid is not None:
        print(f"sample picture: {render_sample_grid(args.out, args.grid)}")
    return 0
