"""Training-step cost, side by side in one run: fused CPU scan vs the PyTorch loop, and the ablations.

    python -m bench.training_speed [--batch 16] [--size 224] [--repeats 5] [--out section.md]

One optimiser step on cached-feature-sized random tokens (what an enrolment epoch repeats), timed in
interleaved rounds in a worker thread, like the training job. The scan implementation is switched per
call (`scan_extension.set_enabled`), so both see the same machine noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch

from bench.model_speed import measure
from model.network import scan_extension
from model.network.config import ModelConfig
from model.network.iumad import IUMADNet
from model.training.losses import iumad_losses

FEATURE_CHANNELS = 24 + 40 + 112  # tf_efficientnet_lite0 at strides 4, 8, 16


def training_step(config: ModelConfig, batch: int, fused: bool, classes: int = 2) -> Callable[[], None]:
    torch.manual_seed(0)
    net = IUMADNet(config, FEATURE_CHANNELS, FEATURE_CHANNELS, classes).train()
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3)
    grid = config.map_grid_size
    rgb = torch.randn(batch, FEATURE_CHANNELS, grid, grid)
    depth = torch.randn(batch, FEATURE_CHANNELS, grid, grid)
    labels = torch.arange(batch) % classes
    present = torch.ones(batch, dtype=torch.bool)

    def step() -> None:
        scan_extension.set_enabled(fused)
        try:
            outputs = net(rgb, depth, present, present, jitter=True)
            loss = iumad_losses(outputs, labels)["total"]
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        finally:
            scan_extension.set_enabled(True)

    return step


def run(batch: int, size: int, repeats: int) -> str:
    base = dataclasses.replace(ModelConfig(), image_size=size)
    variants: dict[str, tuple[ModelConfig, bool]] = {
        "default (d 128, 2 layers), fused scan": (base, True),
        "default, PyTorch loop scan": (base, False),
        "paper width d 256, fused scan": (dataclasses.replace(base, hidden_size=256), True),
        "no Mamba decoder (ablation)": (dataclasses.replace(base, use_mamba=False), True),
        "no IBFM (ablation)": (dataclasses.replace(base, use_ibfm=False), True),
    }
    steps = {name: training_step(config, batch, fused) for name, (config, fused) in variants.items()}
    timings = measure(steps, repeats)
    reference = timings["default (d 128, 2 layers), fused scan"]
    lines = [
        f"Machine: {os.cpu_count()} CPU threads, torch {torch.__version__}, torch threads "
        f"{torch.get_num_threads()}; batch {batch}, {size} px ({base.grid_size}x{base.grid_size} tokens, "
        f"both branches); medians of {repeats} interleaved rounds, one optimiser step each.",
        "",
        "| configuration | seconds per step | relative to default |",
        "|---|---|---|",
    ]
    for name, seconds in timings.items():
        lines.append(f"| {name} | {seconds:.3f} | {seconds / reference:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    report = run(args.batch, args.size, args.repeats)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
