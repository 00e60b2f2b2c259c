"""Enrolment end to end through the HTTP API: time from upload to serving, its split, and the quality.

    python -m bench.enrolment [--objects 2] [--train 250] [--size 224] [--json out.json]

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

FINISHED = ("succeeded", "failed", "canceled", "needs_review")
WORKER_SPLIT = (
    "wait_s",
    "load_s",
    "features_s",
    "training_s",
    "calibration_s",
    "guard_s",
    "save_s",
    "activate_s",
)


def enrol(client: httpx.Client, data: Path, name: str, max_minutes: float | None) -> dict:
    archive = archive_normal_samples(data / name)
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
        "worker": {key: timings.get(key) for key in WORKER_SPLIT},
        "version": version,
        "training_steps": (job.get("metrics") or {}).get("training_steps"),
        "worker_peak_rss_mb": timings.get("peak_rss_mb"),
    }


def inspect_auroc(client: httpx.Client, data: Path, name: str) -> dict:
    labels, scores, latencies = [], [], []
    for rgb_path in sorted((data / name / "test").glob("*/rgb/*.png")):
        depth_path = rgb_path.parent.parent / "xyz" / f"{rgb_path.stem}.tiff"
        started = time.perf_counter()
        response = client.post(
            "/inspect",
            data={"object": name, "mask": "none"},
            files={
                "rgb": (rgb_path.name, rgb_path.read_bytes(), "image/png"),
                "depth": (depth_path.name, depth_path.read_bytes(), "image/tiff"),
            },
        )
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
        labels.append(int(rgb_path.parent.parent.name != "good"))
        scores.append(response.json()["raw_score"])
    return {
        "i_auroc": round(100 * image_auroc(np.array(labels), np.array(scores)), 1),
        "parts": len(labels),
        "median_latency_ms": round(1000 * float(np.median(latencies)), 1),
    }


def run(
    objects: int,
    train: int,
    test: int,
    size: int,
    max_minutes: float | None,
    seed: int,
    service_dir: Path | None = None,
) -> dict:
    """`service_dir`: keep the service's data directory there (e.g. for a load test on the result)."""
    from model.data.synthetic import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="iumad-enrol-bench-") as folder:
        root = Path(folder)
        data = root / "synthetic"
        service_dir = service_dir or root / "service"
        started = time.perf_counter()
        names = write_synthetic_dataset(
            data, objects=objects, size=size, n_train=train, n_validation=0, n_test=test, seed=seed
        )
        generated = time.perf_counter() - started
        port = free_port()
        server = start_server(str(service_dir), port, root / "serve.log")
        report: dict = {
            "size": size,
            "train_pairs": train,
            "synthesis_s": round(generated, 1),
            "enrolments": [],
        }
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                for index, name in enumerate(names):
                    result = enrol(client, data, name, max_minutes)
                    result["kind"] = "base" if index == 0 else "incremental"
                    result["quality"] = {
                        seen: inspect_auroc(client, data, seen) for seen in names[: index + 1]
                    }
                    report["enrolments"].append(result)
                    print(json.dumps(result), flush=True)
        finally:
            server.terminate()
            server.wait(timeout=60)
    return report


def markdown(report: dict) -> str:
    lines = [
        f"Enrolment of {report['train_pairs']} normal pairs per object at {report['size']} px through the "
        "HTTP API (`iumad serve`: embedded Redis, one worker process), one object after the other.",
        "",
        "| object | step | upload + ingest | wait | load | features | training | calibration | guard "
        "| save | activate | upload start -> serving | training steps | worker peak RSS "
        "| I-AUROC over HTTP (all objects so far) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for item in report["enrolments"]:
        worker = item["worker"]
        cells = [f"{worker[key]:.1f} s" if worker.get(key) is not None else "-" for key in WORKER_SPLIT]
        quality = ", ".join(f"{name} {value['i_auroc']}" for name, value in item["quality"].items())
        lines.append(
            f"| {item['object']} | {item['kind']} | {item['upload_and_ingest_s']:.1f} s | "
            + " | ".join(cells)
            + f" | **{item['serving_s']:.1f} s** | {item['training_steps']} | "
            f"{item['worker_peak_rss_mb']} MB | {quality} |"
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
    args = parser.parse_args(argv)
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
