"""Model latency and throughput, side by side in one run: backbone floor, PyTorch, onnxruntime, PatchCore.

    python -m bench.model_speed [--sizes 224,256] [--batches 1,8] [--repeats 20] [--out section.md]

Speed does not depend on weight values, so a network of the named preset (default: the shipped one)
with random weights and ten object slots stands in for a trained version (a trained one can be given
with --model). Every
configuration is timed in interleaved rounds so machine noise hits all of them alike; the report
quotes medians and the ratios between them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import Manifest, ObjectRecord, new_version_id
from model.data.batches import InspectionInput, prepare_inputs
from model.evaluation.patchcore import PatchCore, nearest_distances, patch_features
from model.export import export_onnx, onnx_model
from model.inference import InspectionModel, feature_extractor_for
from model.network import scan_extension
from model.network.config import ModelConfig
from model.network.iumad import IUMADNet
from model.network.presets import PRESETS, SHIPPED_PRESET, preset_config


def random_version(config: ModelConfig, objects: int = 10) -> InspectionModel:
    features = feature_extractor_for(config)
    net = IUMADNet(config, features.channels, features.channels, objects).eval()
    records = [
        ObjectRecord(name=f"object{i}", label=i, modalities=["rgb", "depth"], threshold=1.0)
        for i in range(objects)
    ]
    manifest = Manifest(
        version=new_version_id(),
        config=config,
        feature_channels={"rgb": features.channels, "depth": features.channels},
        objects=records,
    )
    return InspectionModel(net, manifest)


def parts(count: int, size: int, object_name: str, seed: int = 0) -> list[InspectionInput]:
    rng = np.random.default_rng(seed)
    return [
        InspectionInput(
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            (0.4 + 0.05 * rng.random((size, size))).astype(np.float32),
            object_name,
        )
        for _ in range(count)
    ]


def in_thread(function: Callable[[], object]) -> float:
    """Seconds for one call, run in a worker thread as the gateway's inference thread does (PyTorch's
    main-thread OpenMP pool was seen to slow down badly on a shared 2-core machine)."""
    elapsed: list[float] = []

    def target() -> None:
        started = time.perf_counter()
        function()
        elapsed.append(time.perf_counter() - started)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    return elapsed[0]


def measure(configurations: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    for function in configurations.values():  # warm-up
        in_thread(function)
    samples: dict[str, list[float]] = {name: [] for name in configurations}
    for _ in range(repeats):
        for name, function in configurations.items():
            samples[name].append(in_thread(function))
    return {name: statistics.median(values) for name, values in samples.items()}


def time_batch(
    model: InspectionModel,
    onnx: InspectionModel,
    patchcore_backbone: torch.nn.Module,
    bank: torch.Tensor,
    batch_size: int,
    repeats: int,
) -> dict[str, float]:
    size = model.config.image_size
    items = parts(batch_size, size, model.objects[0].name)  # a trained --model has its own names
    prepared = prepare_inputs(items, model.config)
    objects = [item.object for item in items]

    def floor() -> None:
        with torch.inference_mode():
            model.graph.extract(prepared)  # both backbone passes (the batch has depth)

    def patchcore() -> None:
        with torch.inference_mode():
            grid = torch.cat(
                [
                    patch_features(patchcore_backbone, prepared.rgb),
                    patch_features(patchcore_backbone, prepared.depth),
                ],
                dim=1,
            )
            nearest_distances(grid.permute(0, 2, 3, 1).reshape(-1, bank.shape[1]), bank)

    def torch_loop_scan() -> None:
        scan_extension.set_enabled(False)
        try:
            model.predict_prepared(prepared, objects)
        finally:
            scan_extension.set_enabled(True)

    return measure(
        {
            "floor": floor,
            "torch": lambda: model.predict_prepared(prepared, objects),
            "torch_loop": torch_loop_scan,
            "onnx": lambda: onnx.predict_prepared(prepared, objects),
            "patchcore": patchcore,
        },
        repeats,
    )


def run(
    sizes: list[int], batches: list[int], repeats: int, model_dir: Path | None, preset: str = SHIPPED_PRESET
) -> str:
    lines = [
        f"Machine: {os.cpu_count()} CPU threads, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}; medians of {repeats} interleaved rounds.",
        "",
    ]
    lines.append(
        "| image | batch | backbone x2 (floor) | IB-IUMAD PyTorch | PyTorch, loop scan | IB-IUMAD onnxruntime "
        "| PatchCore (1 object) | PyTorch / floor | onnxruntime / floor | PyTorch / onnxruntime |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        if model_dir is not None:
            model = InspectionModel.load(model_dir)
        else:
            model = random_version(preset_config(preset, image_size=size))
        size = model.config.image_size
        with tempfile.TemporaryDirectory() as folder:
            onnx = onnx_model(model.net, model.manifest, export_onnx(model, Path(folder) / "m.onnx"))
        patchcore = PatchCore(image_size=size)
        bank_rows = 16384  # a 200-image object's coreset at 224 px is ~15.7k patches
        with torch.inference_mode():
            dims = patch_features(patchcore.backbone, torch.rand(1, 3, size, size)).shape[1] * 2
        bank = torch.randn(bank_rows, dims)
        for batch_size in batches:
            timings = time_batch(model, onnx, patchcore.backbone, bank, batch_size, repeats)
            per_pair = {name: 1000 * value / batch_size for name, value in timings.items()}
            lines.append(
                f"| {size} | {batch_size} | {per_pair['floor']:.1f} ms | {per_pair['torch']:.1f} ms | "
                f"{per_pair['torch_loop']:.1f} ms | {per_pair['onnx']:.1f} ms | {per_pair['patchcore']:.1f} ms | "
                f"{timings['torch'] / timings['floor']:.2f} | {timings['onnx'] / timings['floor']:.2f} | "
                f"{timings['torch'] / timings['onnx']:.2f} |"
            )
    lines.append("")
    lines.append("Per pair (RGB + depth), preprocessing excluded (it runs in the gateway's decode pool).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,256")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--model", type=Path, help="a trained version directory (default: random weights)")
    parser.add_argument(
        "--preset", default=SHIPPED_PRESET, choices=sorted(PRESETS), help="random-weight network"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    report = run(
        [int(s) for s in args.sizes.split(",")],
        [int(b) for b in args.batches.split(",")],
        args.repeats,
        args.model,
        args.preset,
    )
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
