"""Enrolment end to end through the HTTP API: time from upload to serving, its split, and the quality.

    python -m bench.enrolment [--objects 2] [--train 250] [--size 224] [--json out.json]
    python -m bench.enrolment --data ROOT --names cable_gland,rope [--test-validation]

With `--data`, real objects of an MVTec 3D-AD style dataset are enrolled instead of synthetic ones
(their `train` split only; RGB-only objects are sent without depth), and the inspection quality over
HTTP is I-AUROC, P-AUROC and AUPRO (maps from `return_map=true`, brought to the benchmark's 224 x 224
like `iumad bench` does); `--test-validation` also inspects the validation images as good parts.

Spawns `iumad serve` (embedded Redis + one worker process) on a fresh data directory, generates a
synthetic RGB-D set, then for each object in turn: uploads `--train` normal pairs as one zip archive
(`POST /enroll-object`), follows the job to completion and waits until the gateway serves the new
version. The first object is a base step; every later one is an incremental step (with the
forgetting guard). Reported per enrolment: upload + ingest (the 202), the worker's own split (load,
features, training, calibration, guard, save, activate), and wall time from the upload's start to
the new version serving. After each enrolment every object enrolled so far is inspected over HTTP
on its test parts, and the image AUROC of the returned scores is reported (forgetting shows here).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.service_load import free_port, start_server
from iumad.commands.demo import archive_normal_samples
from model.evaluation.metrics import image_auroc

METRIC_KEYS = ("i_auroc", "p_auroc", "aupro")
FINISHED = ("succeeded", "failed", "canceled", "needs_review")
WORKER_SPLIT = (
    "wait_s",
    "load_s",
    "features_s",
    "training_s",
    "calibration_s",
    "guard_s",
    "export_s",
    "save_s",
    "activate_s",
)


def enrol(
    client: httpx.Client,
    data: Path,
    name: str,
    max_minutes: float | None,
    splits: tuple[str, ...] = ("train", "validation"),
) -> dict:
    archive = archive_normal_samples(data / name, splits)
    fields = {"object": name, "holdout_fraction": "0.1"}
    if max_minutes is not None:
        fields["max_minutes"] = str(max_minutes)
    started = time.perf_counter()
    response = client.post(
        "/enroll-object", data=fields, files={"archive": (f"{name}.zip", archive, "application/zip")}
    )
    accepted = time.perf_counter() - started
    if response.status_code != 202:
        raise SystemExit(f"enrolling {name}: HTTP {response.status_code} {response.text}")
    status_url = response.json()["status_url"]
    while True:
        job = client.get(status_url).json()
        if job["status"] in FINISHED:
            break
        time.sleep(0.25)
    finished = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise SystemExit(f"enrolling {name} ended {job['status']}: {job['message']}")
    version = job["version"]
    while client.get("/readyz").json().get("model_version") != version:
        time.sleep(0.05)
    serving = time.perf_counter() - started
    timings = job.get("timings") or {}
    return {
        "object": name,
        "archive_mb": round(len(archive) / 2**20, 1),
        "upload_and_ingest_s": round(accepted, 2),
        "job_finished_s": round(finished, 2),
        "serving_s": round(serving, 2),
        "gateway_load_s": round(serving - finished, 2),  # the gateway's load and warm-up of the version
        "worker": {key: timings.get(key) for key in WORKER_SPLIT},
        "version": version,
        "training_steps": (job.get("metrics") or {}).get("training_steps"),
        "stop_reason": (job.get("metrics") or {}).get("stop_reason"),
        "worker_peak_rss_mb": timings.get("peak_rss_mb"),
    }


def _inspect_one(client: httpx.Client, name: str, sample, with_map: bool) -> dict:
    files = {"rgb": (sample.rgb_path.name, sample.rgb_path.read_bytes(), "image/png")}
    if sample.depth_path is not None:
        files["depth"] = (sample.depth_path.name, sample.depth_path.read_bytes(), "image/tiff")
    data = {"object": name, "mask": "none", "return_map": str(with_map).lower()}
    response = client.post("/inspect", data=data, files=files)
    response.raise_for_status()
    return response.json()


def inspect_quality(
    client: httpx.Client, data: Path, name: str, with_maps: bool = False, test_validation: bool = False
) -> dict:
    """Inspect the object's test parts over HTTP: image AUROC, and with maps P-AUROC and AUPRO at the
    benchmark's resolution (224 x 224: masks by `resize_mask`, maps bilinearly)."""
    import torch
    import torch.nn.functional as F

    from model.data.samples import pixel_truth
    from model.evaluation.metrics import aupro, pixel_auroc
    from service.masks import decode_anomaly_map

    samples = test_samples(data, name, test_validation)
    truths = pixel_truth(samples, 224) if with_maps else None
    with_maps = truths is not None  # an object with image labels only: its pixel metrics are n/a
    labels, scores, latencies, maps = [], [], [], []
    for sample in samples:
        started = time.perf_counter()
        answer = _inspect_one(client, name, sample, with_maps)
        latencies.append(time.perf_counter() - started)
        labels.append(int(sample.is_anomalous))
        scores.append(answer["raw_score"])
        if with_maps:
            full = torch.from_numpy(decode_anomaly_map(answer["anomaly_map"]).astype(np.float32))
            maps.append(F.interpolate(full[None, None], size=(224, 224), mode="bilinear")[0, 0].numpy())
    result = {
        "i_auroc": round(100 * image_auroc(np.array(labels), np.array(scores)), 1),
        "p_auroc": None,
        "aupro": None,
        "parts": len(labels),
        "median_latency_ms": round(1000 * float(np.median(latencies)), 1),
    }
    if with_maps:
        result["p_auroc"] = round(100 * pixel_auroc(truths, np.stack(maps)), 1)
        result["aupro"] = round(100 * aupro(truths, np.stack(maps)), 1)
    return result


def test_samples(data: Path, name: str, test_validation: bool) -> list:
    """The object's test split, and with `test_validation` its validation images as good parts
    (an object may have no validation images)."""
    from model.data.datasets import list_samples

    samples = list_samples(data, name, "test")
    if test_validation:
        samples += list_samples(data, name, "validation", allow_empty=True)
    return samples


def inspect_auroc(client: httpx.Client, data: Path, name: str) -> dict:
    return inspect_quality(client, data, name)


def enrol_in_turn(
    data: Path,
    names: list[str],
    service_dir: Path,
    log_path: Path,
    max_minutes: float | None,
    splits: tuple[str, ...],
    with_maps: bool,
    test_validation: bool,
) -> list[dict]:
    """Serve on `service_dir`, enrol `names` one after the other, inspect all so far after each."""
    port = free_port()
    server = start_server(str(service_dir), port, log_path)
    enrolments = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            for index, name in enumerate(names):
                result = enrol(client, data, name, max_minutes, splits)
                result["kind"] = "base" if index == 0 else "incremental"
                result["quality"] = {
                    seen: inspect_quality(client, data, seen, with_maps, test_validation)
                    for seen in names[: index + 1]
                }
                enrolments.append(result)
                print(json.dumps(result), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    return enrolments


def run(
    objects: int,
    train: int,
    test: int,
    size: int,
    max_minutes: float | None,
    seed: int,
    service_dir: Path | None = None,
) -> dict:
    """Synthetic objects. `service_dir`: keep the service's data directory there (e.g. for a load
    test on the result)."""
    from model.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="iumad-enrol-bench-") as folder:
        root = Path(folder)
        data = root / "synthetic"
        started = time.perf_counter()
        names = write_synthetic_dataset(
            data, objects=objects, size=size, n_train=train, n_validation=0, n_test=test, seed=seed
        )
        generated = time.perf_counter() - started
        report: dict = {"size": size, "train_pairs": train, "synthesis_s": round(generated, 1)}
        report["enrolments"] = enrol_in_turn(
            data,
            names,
            service_dir or root / "service",
            root / "serve.log",
            max_minutes,
            ("train", "validation"),
            with_maps=False,
            test_validation=False,
        )
    return report


def run_dataset(data: Path, names: list[str], max_minutes: float | None, test_validation: bool) -> dict:
    """Real objects from an MVTec 3D-AD style dataset: their train split is what the operator uploads."""
    from model.data.datasets import list_samples

    with tempfile.TemporaryDirectory(prefix="iumad-enrol-bench-") as folder:
        root = Path(folder)
        enrolments = enrol_in_turn(
            data,
            names,
            root / "service",
            root / "serve.log",
            max_minutes,
            ("train",),
            with_maps=True,
            test_validation=test_validation,
        )
    train_pairs = {name: len(list_samples(data, name, "train")) for name in names}
    return {"size": "dataset", "train_pairs": train_pairs, "enrolments": enrolments}


def markdown(report: dict) -> str:
    pairs = report["train_pairs"]
    what = (
        ", ".join(f"{name} {count}" for name, count in pairs.items()) + " normal pairs (the train split)"
        if isinstance(pairs, dict)
        else f"{pairs} normal pairs per object at {report['size']} px"
    )
    lines = [
        f"Enrolment of {what} through the HTTP API (`iumad serve`: embedded Redis, one worker "
        "process), one object after the other.",
        "",
        "| object | step | upload + ingest | wait | load | features | training | calibration | guard "
        "| export | save | activate | gateway load + warm-up | upload start -> serving | training steps "
        "| stopped | worker peak RSS | quality over HTTP (all objects so far) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in report["enrolments"]:
        worker = item["worker"]
        cells = [f"{worker[key]:.1f} s" if worker.get(key) is not None else "-" for key in WORKER_SPLIT]
        quality = ", ".join(
            f"{name} {' / '.join('n/a' if value.get(k) is None else str(value[k]) for k in METRIC_KEYS)}"
            for name, value in item["quality"].items()
        )
        lines.append(
            f"| {item['object']} | {item['kind']} | {item['upload_and_ingest_s']:.1f} s | "
            + " | ".join(cells)
            + f" | {item['gateway_load_s']:.1f} s | **{item['serving_s']:.1f} s** | {item['training_steps']} | "
            f"{item['stop_reason']} | {item['worker_peak_rss_mb']} MB | {quality} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--train", type=int, default=250, help="normal pairs uploaded per object")
    parser.add_argument("--test", type=int, default=40, help="test parts per object (half defective)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--max-minutes", type=float, default=None, help="job budget (default: the setting)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep-service-dir", type=Path, help="keep the service's data directory here")
    parser.add_argument("--out", type=Path, help="write the markdown section here")
    parser.add_argument("--data", type=Path, help="enrol real objects of this MVTec 3D-AD style dataset")
    parser.add_argument("--names", help="with --data: the objects to enrol, in order (comma-separated)")
    parser.add_argument(
        "--test-validation", action="store_true", help="with --data: inspect validation images as good parts"
    )
    args = parser.parse_args(argv)
    if args.data is not None:
        if not args.names:
            parser.error("--data needs --names")
        names = [name.strip() for name in args.names.split(",") if name.strip()]
        missing = [name for name in names if not (args.data / name / "train" / "good").is_dir()]
        if missing:
            parser.error(f"--names: no {', '.join(missing)} with a train/good folder under {args.data}")
        report = run_dataset(args.data, names, args.max_minutes, args.test_validation)
    else:
        report = run(
            args.objects, args.train, args.test, args.size, args.max_minutes, args.seed, args.keep_service_dir
        )
    text = markdown(report)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
