"""Memory: model size on disk and in RAM, and how it grows with the number of objects, next to PatchCore.

    python -m bench.memory [--size 224] [--train 200] [--out section.md]

IB-IUMAD: a default-config version with 1, 5 and 10 objects is written with `save_version` (the real
checkpoint format) and exported to ONNX; the sizes are read off the files. The RSS growth of this
process from before loading the version to after a batch-8 inference is the model's share of a
gateway's memory. PatchCore: one memory bank per object, whose size follows from its configuration
(coreset ratio x training patches, capped, x feature dimensions x 4 bytes); the 10-object synthetic
benchmark run measured 190.7 MB of banks, i.e. the same 19 MB per object.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from pathlib import Path

import torch

from bench.model_speed import parts, random_version
from model.checkpoint import ONNX_FILE, WEIGHTS_FILE, save_version
from model.data.batches import prepare_inputs
from model.evaluation.patchcore import PatchCore, patch_features
from model.export import export_onnx
from model.inference import InspectionModel
from model.network.config import ModelConfig


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def patchcore_bank_mb(size: int, train_images: int) -> float:
    patchcore = PatchCore(image_size=size)
    with torch.inference_mode():
        grid = patch_features(patchcore.backbone, torch.rand(1, 3, size, size))
    dims, cells = 2 * grid.shape[1], grid.shape[2] * grid.shape[3]  # RGB + depth concatenated
    rows = min(patchcore.max_coreset, math.ceil(patchcore.coreset_ratio * train_images * cells))
    return rows * dims * 4 / 2**20


def run(size: int, train_images: int) -> str:
    config = dataclasses.replace(ModelConfig(), image_size=size)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for objects in (1, 5, 10):
            version = random_version(config, objects)
            directory = Path(folder) / f"v{objects}"
            onnx = export_onnx(version, Path(folder) / f"m{objects}.onnx")
            save_version(version.net, version.manifest, directory, extra_files={ONNX_FILE: onnx})
            rows.append(
                (
                    objects,
                    (directory / WEIGHTS_FILE).stat().st_size / 2**20,
                    (directory / ONNX_FILE).stat().st_size / 2**20,
                )
            )
        before = rss_mb()
        model = InspectionModel.load(Path(folder) / "v10")
        items = parts(8, size, model.objects[0].name)
        model.predict_prepared(prepare_inputs(items, model.config), [item.object for item in items])
        after = rss_mb()
    bank = patchcore_bank_mb(size, train_images)
    lines = [
        f"{size} px, default config; PatchCore banks for {train_images} training images per object.",
        "",
        "| objects | IB-IUMAD model.safetensors | IB-IUMAD model.onnx (incl. both backbones) "
        "| PatchCore memory banks |",
        "|---|---|---|---|",
    ]
    for objects, weights, onnx in rows:
        lines.append(f"| {objects} | {weights:.1f} MB | {onnx:.1f} MB | {bank * objects:.1f} MB |")
    lines += [
        "",
        f"Loading the 10-object version and running one batch of 8 pairs grew this process's RSS by "
        f"{after - before:.0f} MB (to {after:.0f} MB, Python + torch included).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--train", type=int, default=200, help="training images per object (PatchCore)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run(args.size, args.train)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
