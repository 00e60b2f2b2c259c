"""`iumad demo`: the first thing to try against a running service.

Generates a small synthetic RGB-D set, enrols two objects through the HTTP API (with progress),
inspects a few normal and defective parts of each, prints a table and writes heat-map overlays.
Everything goes through the public API, exactly as a line PC and an operator would use it.
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import get_settings
from model.errors import IumadError

DEMO_OBJECTS = 2
FINISHED = ("succeeded", "failed", "canceled", "needs_review")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the service (default: http://IUMAD_HOST:IUMAD_PORT)")
    parser.add_argument("--api-key", help="an operator API key (default: the first IUMAD_OPERATOR_API_KEYS)")
    parser.add_argument("--out", type=Path, default=Path("iumad-demo"), help="synthetic data and overlays")
    parser.add_argument("--size", type=int, default=224, help="synthetic image size in pixels")
    parser.add_argument("--train", type=int, default=40, help="normal samples per object to enrol")
    parser.add_argument("--parts", type=int, default=4, help="parts to inspect per object (half defective)")
    parser.add_argument("--max-minutes", type=float, default=2.0, help="time budget of each enrolment job")
    parser.add_argument("--replace", action="store_true", help="re-enrol objects that are already enrolled")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--verbose", action="store_true", help="also log every HTTP request the demo makes")


def quiet_http_logs(verbose: bool) -> None:
    """httpx logs every request at INFO: between the progress lines that is noise on a newcomer's
    first screen, so only `--verbose` shows it."""
    level = logging.NOTSET if verbose else logging.WARNING
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(level)


def run(args: argparse.Namespace) -> int:
    import httpx

    quiet_http_logs(args.verbose)

    from model.data.synthetic import write_synthetic_dataset

    settings = get_settings()
    url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
    api_key = args.api_key or (settings.operator_api_keys[0] if settings.operator_api_keys else None)
    client = httpx.Client(base_url=url, headers={"X-API-Key": api_key} if api_key else {}, timeout=120)
    try:
        ready = client.get("/readyz")
    except httpx.HTTPError as error:
        raise IumadError(f"no service at {url} ({error}); start one with `iumad serve` first") from error
    print(
        f"service at {url}: {ready.json().get('state')}, serving {ready.json().get('model_version') or 'nothing'}"
    )

    data = args.out / "data"
    if not data.exists():
        print(f"writing a synthetic set to {data} ...")
        write_synthetic_dataset(
            data,
            objects=DEMO_OBJECTS,
            size=args.size,
            n_train=args.train,
            n_validation=max(4, args.train // 8),
            n_test=max(2, args.parts * 2),
            seed=args.seed,
        )
    names = sorted(path.name for path in data.iterdir() if path.is_dir())
    for name in names:
        _enrol(client, data, name, args.max_minutes, args.replace)
    _wait_serving(client)

    rows = []
    overlays = args.out / "overlays"
    overlays.mkdir(parents=True, exist_ok=True)
    for name in names:
        for truth, rgb_path in _demo_parts(data / name, args.parts):
            rows.append(_inspect(client, name, truth, rgb_path, overlays))
    _print_table(rows)
    print(f"heat-map overlays (part | heat map) in {overlays}")
    return 0


def archive_normal_samples(folder: Path, splits: tuple[str, ...] = ("train", "validation")) -> bytes:
    """The object's normal samples (by default train + validation) as a zip in MVTec 3D-AD layout."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as bundle:
        for split in splits:
            for path in sorted((folder / split / "good").rglob("*")):
                if path.is_file():
                    bundle.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def _enrol(client: Any, data: Path, name: str, max_minutes: float | None, replace: bool) -> None:
    fields = {"object": name, "holdout_fraction": "0.15", "replace": str(replace).lower()}
    if max_minutes is not None:
        fields["max_minutes"] = str(max_minutes)
    response = client.post(
        "/enroll-object",
        data=fields,
        files={"archive": (f"{name}.zip", archive_normal_samples(data / name), "application/zip")},
    )
    if response.status_code == 409 and not replace:
        print(f"{name}: {response.json()['error']['message']} (using it as it is)")
        return
    if response.status_code != 202:
        raise IumadError(f"enrolling {name} failed: HTTP {response.status_code} {response.text}")
    job = response.json()
    print(f"{name}: {job['message']}")
    status_url = job["status_url"]
    started = time.monotonic()
    while True:
        job = client.get(status_url).json()
        _progress_bar(name, job, time.monotonic() - started)
        if job["status"] in FINISHED:
            break
        time.sleep(0.5)
    print()
    if job["status"] != "succeeded":
        raise IumadError(f"enrolment of {name} ended {job['status']}: {job['message']}")
    print(f"{name}: {job['message']}")
    _wait_until_serving(client, status_url)


def _wait_until_serving(client: Any, status_url: str, timeout_s: float = 60.0) -> None:
    """A succeeded job's version is active; the gateway serves it once loaded (about a second)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(status_url).json()
        if job.get("version_serving") or not job.get("version_active", True):  # superseded meanwhile
            return
        time.sleep(0.25)
    raise IumadError("the gateway did not start serving the new model version within a minute")


def _progress_bar(name: str, job: dict[str, Any], elapsed: float, width: int = 30) -> None:
    done = int(round(width * float(job.get("progress", 0.0))))
    bar = "#" * done + "." * (width - done)
    detail = (job.get("message") or job.get("stage") or "")[:50]
    print(
        f"\r{name:>10} [{bar}] {100 * job.get('progress', 0.0):5.1f}% {elapsed:5.0f} s  {detail:<50}",
        end="",
        file=sys.stdout,
        flush=True,
    )


def _wait_serving(client: Any, timeout_s: float = 60.0) -> None:
    """Activation reaches the gateways within a second or two; wait until a model serves."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = client.get("/readyz").json()
        if body.get("model_version") and body.get("model_version") == body.get("active_version"):
            return
        time.sleep(0.25)
    raise IumadError("the service did not start serving the new model version within a minute")


def _demo_parts(folder: Path, count: int) -> list[tuple[str, Path]]:
    """`count` test parts: half normal, half defective (different defect kinds first)."""
    normals = sorted((folder / "test" / "good" / "rgb").glob("*.png"))
    defects = sorted(
        path for path in (folder / "test").glob("*/rgb/*.png") if path.parent.parent.name != "good"
    )
    defects.sort(key=lambda path: (path.stem, path.parent.parent.name))
    chosen = normals[: (count + 1) // 2] + defects[: count // 2]
    return [(path.parent.parent.name, path) for path in chosen]


def _inspect(client: Any, name: str, truth: str, rgb_path: Path, overlays: Path) -> dict[str, Any]:
    depth_path = rgb_path.parent.parent / "xyz" / f"{rgb_path.stem}.tiff"
    started = time.perf_counter()
    response = client.post(
        "/inspect",
        data={"object": name, "mask": "none", "return_map": "true"},
        files={
            "rgb": (rgb_path.name, rgb_path.read_bytes(), "image/png"),
            "depth": (depth_path.name, depth_path.read_bytes(), "image/tiff"),
        },
    )
    latency_ms = 1000 * (time.perf_counter() - started)
    if response.status_code != 200:
        raise IumadError(f"inspecting {rgb_path} failed: HTTP {response.status_code} {response.text}")
    body = response.json()
    overlay = overlays / f"{name}_{truth}_{rgb_path.stem}.png"
    _write_overlay(rgb_path, body, overlay)
    return {
        "object": name,
        "truth": truth,
        "decision": "FAIL" if body["is_anomalous"] else "pass",
        "score": body["score"],
        "latency_ms": latency_ms,
        "version": body["model_version"],
    }


_HEAT = np.array([[0, 0, 128], [0, 128, 255], [0, 220, 120], [255, 220, 0], [255, 0, 0]], dtype=np.float64)


def _write_overlay(rgb_path: Path, body: dict[str, Any], target: Path) -> None:
    """The part and its anomaly map side by side; red where the map reaches the threshold."""
    from PIL import Image

    from service.masks import decode_anomaly_map

    rgb = np.asarray(Image.open(rgb_path).convert("RGB"), dtype=np.float64)
    heat = decode_anomaly_map(body["anomaly_map"])
    low, high = float(heat.min()), max(float(heat.max()), float(body["threshold"]))
    scaled = np.clip((heat - low) / max(high - low, 1e-9), 0.0, 1.0) * (len(_HEAT) - 1)
    colours = np.stack([np.interp(scaled, np.arange(len(_HEAT)), _HEAT[:, c]) for c in range(3)], axis=-1)
    blended = 0.55 * rgb + 0.45 * colours
    picture = np.concatenate([rgb, blended], axis=1).clip(0, 255).astype(np.uint8)
    Image.fromarray(picture).save(target)


def _print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(f"{'object':<10} {'truth':<14} {'decision':<8} {'score':>8} {'latency':>10}  model version")
    for row in rows:
        print(
            f"{row['object']:<10} {row['truth']:<14} {row['decision']:<8} {row['score']:>8.3f} "
            f"{row['latency_ms']:>8.1f} ms  {row['version']}"
        )
