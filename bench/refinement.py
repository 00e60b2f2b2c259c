"""The correction loop on real parts: enrol, inspect a stream of good parts, mark the false rejects
good, refine, and measure on parts neither step saw.

    python -m bench.refinement --data DIR [--objects cable_gland,rope,bottle] [--stream 50]
        [--minutes 4] [--seed 0] [--out out/refinement]
    python -m bench.refinement --data DIR --over-http cable_gland [--stream 50]

Per object, its train split is divided: every k-th image (`--stream` of them) is the stream of good
parts a line would inspect after enrolment; the rest is what the operator enrolled (10 % of it held
out for calibration, as an enrolment over HTTP). The objects are learned one after another as
enrolments learn them (a base step, then incremental steps; each stops on convergence within
`--minutes`), then each object in turn is refined (model/training/refinement.py, the code the
worker's refinement job runs) on the false rejects of its stream. Measured on the disjoint parts
(validation images as good, the test split): false-reject and miss rates at the object's
threshold and I-AUROC, before and after; the refinement's own time and the time to save and export
the version (the rest of a refinement's way to serving, loading and warming up in the gateway, is
measured for enrolments in docs/BENCHMARKS.md); every other object's maps before and after
(bit-identical is the claim).

`--over-http OBJECT` times the same loop as an operator runs it: `iumad serve` (embedded Redis + one
worker, rejected parts' images kept) on a fresh data directory, the enrolled part of the train split
uploaded, the stream inspected, and every stream part marked good (`POST /inspections/{id}/feedback`:
a rejected part's images as the gateway kept them, a passed part's attached), so that the
refinement has `--stream` corrections; then `POST /objects/{name}/refine` and the time until the
gateway serves the refined version.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data.datasets import list_samples
from model.data.samples import Sample
from model.errors import InputError
from model.evaluation.evaluate import predict_samples
from model.evaluation.metrics import image_auroc
from model.inference import InspectionModel
from model.network.presets import PRESETS, SHIPPED_PRESET
from model.training.features import ObjectSamples
from model.training.options import TrainingOptions
from model.training.refinement import refine_version
from model.training.trainer import sample_sources, train_version

DEFAULT_OBJECTS = ("cable_gland", "rope", "bottle")


@dataclass(frozen=True)
class ObjectSplit:
    """One object's parts: what was enrolled (train, holdout), the stream, and the disjoint test set."""

    train: list[Sample]
    holdout: list[Sample]
    stream: list[Sample]
    test: list[Sample]


def split_object(data: Path, name: str, stream_count: int, holdout_fraction: float = 0.1) -> ObjectSplit:
    train = list_samples(data, name, "train")
    step = max(2, len(train) // stream_count)
    stream = [s for i, s in enumerate(train) if i % step == step - 1][:stream_count]
    chosen = {s.rgb_path for s in stream}
    enrolled = [s for s in train if s.rgb_path not in chosen]
    every = max(2, round(1 / holdout_fraction))
    holdout = [s for i, s in enumerate(enrolled) if i % every == every - 1]
    fit_on = [s for i, s in enumerate(enrolled) if i % every != every - 1]
    test = list_samples(data, name, "validation", allow_empty=True) + list_samples(data, name, "test")
    return ObjectSplit(fit_on, holdout, stream, test)


def rates(model: InspectionModel, name: str, samples: list[Sample]) -> dict:
    """False-reject and miss rates at the object's threshold, and I-AUROC, on `samples`."""
    scores, maps, _ = predict_samples(model, name, samples)
    labels = np.array([s.is_anomalous for s in samples], dtype=int)
    threshold = float(model.object(name).threshold)
    rejected = scores > threshold
    return {
        "threshold": threshold,
        "false_reject_rate": float(rejected[labels == 0].mean()),
        "miss_rate": float((~rejected[labels == 1]).mean()) if labels.any() else None,
        "false_rejects": int(rejected[labels == 0].sum()),
        "goods": int((labels == 0).sum()),
        "defects": int(labels.sum()),
        "i_auroc": image_auroc(labels, scores) if labels.any() and not labels.all() else None,
        "maps": maps,
    }


def enrol_all(splits: dict[str, ObjectSplit], options: TrainingOptions) -> InspectionModel:
    model = None
    for name, split in splits.items():
        objects = [ObjectSamples(name, sample_sources(split.train), sample_sources(split.holdout))]
        result = train_version(objects, parent=model, config=PRESETS[SHIPPED_PRESET], options=options)
        model = InspectionModel(result.net, result.manifest)
        training = result.manifest.training
        print(
            f"enrolled {name}: {training['steps']} steps, {training['seconds']} s, {training['stop_reason']}"
        )
    assert model is not None
    return model


def refine_one(
    model: InspectionModel,
    name: str,
    split: ObjectSplit,
    others: dict[str, list[Sample]],
    options: TrainingOptions,
) -> tuple[InspectionModel, dict]:
    """Stream, mark the false rejects good, refine, measure; returns the refined model (or the same
    one when the stream had no false reject) and the row of the report."""
    stream_scores, _, _ = predict_samples(model, name, split.stream)
    threshold = float(model.object(name).threshold)
    false_rejects = [s for s, score in zip(split.stream, stream_scores, strict=True) if score > threshold]
    before = rates(model, name, split.test)
    row = {"object": name, "stream": len(split.stream), "marked_good": len(false_rejects), "before": before}
    if not false_rejects:
        row["after"] = None
        return model, row
    normals = ObjectSamples(name, sample_sources(split.train), sample_sources(split.holdout))
    started = time.perf_counter()
    result = refine_version(model, name, normals, sample_sources(false_rejects), [], options)
    row["refine_s"] = round(time.perf_counter() - started, 2)
    refined = InspectionModel(result.net, result.manifest)
    row["training"] = {k: result.manifest.training[k] for k in ("steps", "seconds", "stop_reason")}
    row["save_export_s"] = _save_and_export_s(refined)
    row["after"] = rates(refined, name, split.test)
    row["others_identical"] = {
        other: bool(np.array_equal(rates(model, other, s)["maps"], rates(refined, other, s)["maps"]))
        for other, s in others.items()
    }
    return refined, row


def _save_and_export_s(model: InspectionModel) -> float:
    from model.checkpoint import ONNX_FILE, save_version
    from model.export import export_onnx

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        graph = export_onnx(model, Path(scratch) / ONNX_FILE)
        save_version(model.net, model.manifest, Path(scratch) / "version", extra_files={ONNX_FILE: graph})
    return round(time.perf_counter() - started, 2)


def refine_over_http(name: str, split: ObjectSplit) -> dict:
    import io
    import os
    import zipfile

    import httpx

    from bench.service_load import free_port, start_server

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # what the operator uploads: the enrolled pairs
        for sample in [*split.train, *split.holdout]:
            archive.write(sample.rgb_path, f"{name}/train/good/rgb/{sample.rgb_path.name}")
            if sample.depth_path is not None:
                archive.write(sample.depth_path, f"{name}/train/good/xyz/{sample.depth_path.name}")
    os.environ["IUMAD_KEEP_REJECTED_IMAGES"] = "true"
    with tempfile.TemporaryDirectory(prefix="iumad-refine-bench-") as folder:
        port = free_port()
        server = start_server(str(Path(folder) / "service"), port, Path(folder) / "serve.log")
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                enrolled = client.post(
                    "/enroll-object", data={"object": name}, files={"archive": ("a.zip", buffer.getvalue())}
                )
                _served(client, enrolled.json()["job_id"])
                rejected = 0
                for sample in split.stream:
                    files = {"rgb": (sample.rgb_path.name, sample.rgb_path.read_bytes())}
                    if sample.depth_path is not None:
                        files["depth"] = (sample.depth_path.name, sample.depth_path.read_bytes())
                    answer = client.post(
                        "/inspect", data={"object": name, "mask": "none"}, files=files
                    ).json()
                    path = f"/inspections/{answer['request_id']}/feedback"
                    if answer["is_anomalous"]:
                        rejected += 1
                        marked = client.post(path, json={"verdict": "good"})
                    else:
                        marked = client.post(path, data={"verdict": "good"}, files=files)
                    if marked.status_code != 200:
                        raise SystemExit(f"marking {sample.name}: HTTP {marked.status_code} {marked.text}")
                started = time.perf_counter()
                refined = client.post(f"/objects/{name}/refine", json={})
                if refined.status_code != 202:
                    raise SystemExit(f"refining {name}: HTTP {refined.status_code} {refined.text}")
                job = _served(client, refined.json()["job_id"])
                return {
                    "object": name,
                    "stream": len(split.stream),
                    "rejected_in_stream": rejected,
                    "marked_good": len(split.stream),
                    "request_to_serving_s": round(time.perf_counter() - started, 2),
                    "job_timings": job["timings"],
                    "status": job["status"],
                }
        finally:
            server.terminate()
            server.wait(timeout=60)


def _served(client, job_id: str) -> dict:
    """Follow a job to its end, then until the gateway answers with its version."""
    while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(0.25)
    if job["status"] != "succeeded":
        raise SystemExit(f"job {job_id} ended {job['status']}: {job['message']}")
    while client.get("/readyz").json().get("model_version") != job["version"]:
        time.sleep(0.05)
    return job


def markdown(rows: list[dict]) -> str:
    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    lines = [
        "| object | stream | marked good | false rejects before -> after (disjoint goods) | misses before -> after "
        "| I-AUROC before -> after | refinement s (training steps, stop) | save + export s | other objects' maps |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        before, after = row["before"], row["after"]
        if after is None:
            lines.append(
                f"| {row['object']} | {row['stream']} | 0 | {before['false_rejects']}/{before['goods']} -> (nothing to refine) "
                f"| {percent(before['miss_rate'])} | {percent(before['i_auroc'])} | - | - | - |"
            )
            continue
        training = row["training"]
        identical = ", ".join(
            f"{k} {'identical' if v else 'CHANGED'}" for k, v in row["others_identical"].items()
        )
        lines.append(
            f"| {row['object']} | {row['stream']} | {row['marked_good']} "
            f"| {before['false_rejects']}/{before['goods']} -> {after['false_rejects']}/{after['goods']} "
            f"| {percent(before['miss_rate'])} -> {percent(after['miss_rate'])} "
            f"| {percent(before['i_auroc'])} -> {percent(after['i_auroc'])} "
            f"| {row['refine_s']} ({training['steps']}, {training['stop_reason']}) | {row['save_export_s']} "
            f"| {identical or '-'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the real development set (prepare.sh)")
    parser.add_argument("--objects", default=",".join(DEFAULT_OBJECTS), help="in enrolment order")
    parser.add_argument("--stream", type=int, default=50, help="good parts inspected after enrolment")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget of each step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/refinement"))
    parser.add_argument("--over-http", metavar="OBJECT", help="time the loop over HTTP for this object")
    args = parser.parse_args(argv)
    if args.stream < 1 or not args.minutes > 0:
        parser.error("--stream must be at least 1 and --minutes positive")
    names = [args.over_http] if args.over_http else [n.strip() for n in args.objects.split(",") if n.strip()]
    try:  # an unknown object or folder stops here, before any training
        splits = {name: split_object(args.data, name, args.stream) for name in names}
    except InputError as error:
        parser.error(str(error))
    if args.over_http:
        print(json.dumps(refine_over_http(args.over_http, splits[args.over_http]), indent=1))
        return 0
    options = TrainingOptions(seed=args.seed, stop_when_converged=True, max_seconds=60 * args.minutes)
    model = enrol_all(splits, options)
    rows = []
    for name in names:
        others = {other: splits[other].test[:8] for other in names if other != name}
        model, row = refine_one(model, name, splits[name], others, options)
        rows.append(row)
        print(markdown([row]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(rows)
    (args.out / "refinement.md").write_text(table)
    for row in rows:
        for side in ("before", "after"):
            if row.get(side):
                row[side].pop("maps", None)
    (args.out / "refinement.json").write_text(json.dumps(rows, indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
