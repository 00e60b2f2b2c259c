"""`make performance`: every benchmark section, one after the other on an otherwise idle machine.

    python -m bench.run_all [--out out/bench] [--soak-seconds 300] [--quick]

Sections (each also runnable alone, see its module): model speed (PyTorch, PyTorch with the loop
scan, onnxruntime, the backbone floor and PatchCore, batch 1/8, 224/256 px), training-step cost,
memory, enrolment end to end over HTTP (upload to serving, with the worker's split), and the
service under load (8 clients, half load, then a soak at 80 % of capacity) on the model that the
enrolment section produced. Each section is written to OUT/<name>.md and all of them to
OUT/report.md, from which docs/BENCHMARKS.md quotes; the sections run sequentially because they
would otherwise compete for the same CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def section(out: Path, name: str, module: str, arguments: list[str]) -> str:
    target = out / f"{name}.md"
    command = [sys.executable, "-m", module, *arguments]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    elapsed = time.perf_counter() - started
    text = target.read_text() if target.exists() else "(no output)\n"
    return f"## {name}\n\n`python -m {module} {' '.join(arguments)}` ({elapsed:.0f} s)\n\n{text}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="few repeats, small sets, no soak (a smoke run)")
    args = parser.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    service_dir = out / "service-data"
    shutil.rmtree(service_dir, ignore_errors=True)
    parts = [*_offline_sections(out, args.quick, service_dir), _service_load_section(out, args, service_dir)]
    report = out / "report.md"
    report.write_text("# Benchmark run\n\n" + "\n".join(parts))
    print(f"wrote {report}")
    return 0


def _offline_sections(out: Path, quick: bool, service_dir: Path) -> list[str]:
    """Model speed, training speed, memory, and the enrolments whose versions the load phase serves."""
    repeats = "3" if quick else "20"
    enrolment = [
        *("--train", "30" if quick else "250", "--test", "8" if quick else "40"),
        *(["--max-minutes", "1"] if quick else []),
        *("--keep-service-dir", str(service_dir)),
        *("--json", str(out / "enrolment.json"), "--out", str(out / "enrolment.md")),
    ]
    return [
        section(
            out,
            "model_speed",
            "bench.model_speed",
            ["--repeats", repeats, "--out", str(out / "model_speed.md")],
        ),
        section(
            out,
            "training_speed",
            "bench.training_speed",
            ["--repeats", "2" if quick else "5", "--out", str(out / "training_speed.md")],
        ),
        section(out, "memory", "bench.memory", ["--out", str(out / "memory.md")]),
        section(out, "enrolment", "bench.enrolment", enrolment),
    ]


def _service_load_section(out: Path, args: argparse.Namespace, service_dir: Path) -> str:
    """The gateway under load on the enrolled versions (with a hot swap between them when two)."""
    enrolments = json.loads((out / "enrolment.json").read_text())["enrolments"]
    version = enrolments[-1]["version"]
    load_arguments = [
        *("--start-server", str(service_dir), "--clients", "8"),
        *("--seconds", "10" if args.quick else "60", "--half-load"),
        *(["--swap-to", enrolments[0]["version"]] if len(enrolments) > 1 else []),
        *("--soak-seconds", "0" if args.quick else str(args.soak_seconds)),
        *("--json", str(out / "service_load.json")),
    ]
    target = out / "service_load.md"
    print(f"== service_load (model {version})", flush=True)
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "bench.service_load", *load_arguments],
        check=True,
        capture_output=True,
        text=True,
    )
    target.write_text(f"```\n{result.stdout}```\n")
    return (
        f"## service_load\n\n`python -m bench.service_load {' '.join(load_arguments)}` "
        f"({time.perf_counter() - started:.0f} s)\n\n{target.read_text()}\n"
    )


if __name__ == "__main__":
    sys.exit(main())
