"""`iumad export`: a model version's inference graph as ONNX (dynamic batch axis)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from model.data.batches import InspectionInput
from model.errors import InputError
from model.export import export_onnx, onnx_model
from model.inference import InspectionModel


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="model version directory")
    parser.add_argument("--out", type=Path, required=True, help="where to write the .onnx file")


def parity_check(model: InspectionModel, onnx_path: Path, seed: int = 0) -> dict[str, float]:
    """Max abs difference of maps and scores between PyTorch and onnxruntime on random parts."""
    rng = np.random.default_rng(seed)
    size = model.config.image_size
    items = [
        InspectionInput(
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            (0.4 + 0.05 * rng.random((size, size))).astype(np.float32),
            None,
        )
        for _ in range(2)
    ]
    reference = model.predict(items)
    exported = onnx_model(model.net, model.manifest, onnx_path).predict(items)
    return {
        "max_abs_map": max(
            float(np.abs(a.anomaly_map - b.anomaly_map).max())
            for a, b in zip(reference, exported, strict=True)
        ),
        "max_abs_score": max(
            abs(a.raw_score - b.raw_score) for a, b in zip(reference, exported, strict=True)
        ),
    }


def run(args: argparse.Namespace) -> int:
    if args.out.suffix != ".onnx":
        raise InputError(f"--out must end in .onnx, got {args.out}")
    model = InspectionModel.load(args.model)
    export_onnx(model, args.out)
    print(
        json.dumps({"model": model.version, "onnx": str(args.out), **parity_check(model, args.out)}, indent=2)
    )
    return 0
