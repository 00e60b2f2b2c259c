"""The real quality table: ours against a per-object PatchCore on the real development set, over seeds.

    python -m bench.real_quality --data DIR [--objects cable_gland,rope,bottle] [--seeds 0,1,2]
        [--minutes 4] [--preset cpu] [--config JSON] [--image-size 224] [--patchcore-seeds 0,1,2]
        [--out out/real-quality]

Ours: the objects learned one after another as enrolments learn them (protocol 1-1x(N-1): a base
step, then one incremental step per object), each step with the training-loop budget that an
enrolment's 5-minute job leaves (`--minutes`, default 4), scored after the last step (object
adapters keep old objects bit-identical, so that is also each object's score after its own step).
PatchCore: one memory bank per object at the same input size on the same backbone. Both score
each object's validation images as extra good test images (never trained on). Reported: mean and
spread (min-max) over the seeds; a difference under the spread is not a result. PatchCore runs are
kept in the output folder and reused when the same size, backbone and seed come again.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.errors import InputError
from model.evaluation.benchmark import METRICS, run_benchmark
from model.network.config import ModelConfig

DEFAULT_OBJECTS = ("cable_gland", "rope", "bottle")


@dataclass(frozen=True)
class Spread:
    """One metric of one object over seeds (percent); None where the metric is not available."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    def text(self) -> str:
        if not self.values:
            return "n/a"
        if len(self.values) == 1:
            return f"{self.values[0]:.1f}"
        return f"{self.mean:.1f} ({min(self.values):.1f}-{max(self.values):.1f})"


def ours_config(preset: str | None, config_json: str | None) -> ModelConfig:
    from iumad.commands.bench import parse_config_overrides

    return parse_config_overrides(config_json, preset)


def run_ours(
    data: Path,
    objects: list[str],
    seed: int,
    minutes: float,
    config: ModelConfig,
    image_size: int,
    out: Path,
    stop_when_converged: bool = False,
) -> dict:
    protocol = f"1-1x{len(objects) - 1}" if len(objects) > 1 else "1-0"
    results = run_benchmark(
        data, protocol, objects=objects, method="ib-iumad", out_dir=out, image_size=image_size,
        test_validation=True, seed=seed, base_max_minutes=minutes, max_minutes=minutes, config=config,
        stop_when_converged=stop_when_converged,
    )  # fmt: skip
    final = results["steps"][-1]["eval"]
    own = {name: step["eval"][name] for step in results["steps"] for name in step["trained"]}
    run = json.loads((out / "run.json").read_text())
    return {"final": final, "own_step": own, "training": run.get("training"), "fm": results["fm"]}


def run_patchcore(
    data: Path, objects: list[str], seed: int, backbone: str, image_size: int, out: Path
) -> dict:
    cached = out / "results.json"
    if cached.exists():
        return json.loads(cached.read_text())["steps"][0]["eval"]
    results = run_benchmark(
        data, f"{len(objects)}-0", objects=objects, method="patchcore", out_dir=out, image_size=image_size,
        test_validation=True, seed=seed, backbone=backbone,
    )  # fmt: skip
    return results["steps"][0]["eval"]


def spreads(runs: list[dict[str, dict]], objects: list[str]) -> dict[str, dict[str, Spread]]:
    return {
        name: {
            key: Spread(tuple(run[name][key] for run in runs if run[name][key] is not None))
            for key in METRICS
        }
        for name in objects
    }


def markdown(ours: dict[str, dict[str, Spread]], patchcore: dict[str, dict[str, Spread]], header: str) -> str:
    lines = [
        header,
        "",
        "| object | ours I-AUROC | PatchCore I-AUROC | difference | ours P-AUROC | PatchCore P-AUROC "
        "| ours AUPRO | PatchCore AUPRO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ours:
        a, b = ours[name]["i_auroc"].mean, patchcore[name]["i_auroc"].mean
        difference = f"{a - b:+.1f}" if a is not None and b is not None else "n/a"
        lines.append(
            f"| {name} | {ours[name]['i_auroc'].text()} | {patchcore[name]['i_auroc'].text()} | {difference} "
            f"| {ours[name]['p_auroc'].text()} | {patchcore[name]['p_auroc'].text()} "
            f"| {ours[name]['aupro'].text()} | {patchcore[name]['aupro'].text()} |"
        )
    means = {
        side: [table[name]["i_auroc"].mean for name in table if table[name]["i_auroc"].mean is not None]
        for side, table in (("ours", ours), ("patchcore", patchcore))
    }
    lines += [
        "",
        f"Mean I-AUROC over the objects: ours {np.mean(means['ours']):.1f}, "
        f"PatchCore {np.mean(means['patchcore']):.1f}.",
    ]
    return "\n".join(lines) + "\n"


def seeds_argument(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must be comma-separated integers, not {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("give at least one seed")
    return seeds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the real development set (prepare.sh)")
    parser.add_argument("--objects", default=",".join(DEFAULT_OBJECTS), help="in enrolment order")
    parser.add_argument("--seeds", type=seeds_argument, default=[0, 1, 2])
    parser.add_argument("--patchcore-seeds", type=seeds_argument, default=None, help="default: --seeds")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget of each step")
    parser.add_argument("--preset", default=None, help="network preset (default: the shipped one)")
    parser.add_argument("--config", default=None, help="model config overrides as JSON")
    parser.add_argument("--image-size", type=int, default=None, help="default: the preset's")
    parser.add_argument(
        "--stop-when-converged", action="store_true", help="end each step on convergence, as enrolments do"
    )
    parser.add_argument("--skip-patchcore", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("out/real-quality"))
    args = parser.parse_args(argv)
    if not args.minutes > 0:
        parser.error(f"--minutes must be positive, got {args.minutes}")
    objects = [name.strip() for name in args.objects.split(",") if name.strip()]
    try:
        config = ours_config(args.preset, args.config)
    except InputError as error:
        parser.error(str(error))
    size = args.image_size or config.image_size
    ours_runs = []
    for seed in args.seeds:
        folder = args.out / f"ours-s{seed}"
        ours_runs.append(
            run_ours(args.data, objects, seed, args.minutes, config, size, folder, args.stop_when_converged)
        )
        print(json.dumps({"seed": seed, **ours_runs[-1]}), flush=True)
    report = {"objects": objects, "config": config.to_dict(), "minutes": args.minutes, "ours": ours_runs}
    ours = spreads([run["final"] for run in ours_runs], objects)
    patchcore_runs = []
    if not args.skip_patchcore:
        for seed in args.patchcore_seeds or args.seeds:
            folder = args.out / f"patchcore-{config.backbone}-{size}-s{seed}"
            patchcore_runs.append(run_patchcore(args.data, objects, seed, config.backbone, size, folder))
    report["patchcore"] = patchcore_runs
    empty = {name: {key: Spread(()) for key in METRICS} for name in objects}
    table = markdown(
        ours,
        spreads(patchcore_runs, objects) if patchcore_runs else empty,
        f"Seeds {', '.join(map(str, args.seeds))}; {args.minutes:g}-minute steps; {size} px; "
        f"backbone {config.backbone}; map stride {config.map_stride}.",
    )
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "table.md").write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
