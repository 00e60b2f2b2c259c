"""Gateway memory, and other clients' latency, while hostile uploads arrive (issue #14's targets).

    python -m bench.hostile_uploads [--size 400] [--out section.md]

Starts `iumad serve` (embedded Redis, no worker) on a fresh data folder holding a random-weight
version of the shipped preset: memory and time do not depend on the weights. Then, with a steady
client inspecting a `--size` px RGB + z part in a closed loop the whole time:
1. baseline: the steady client alone for `--baseline-s` seconds -> its latency, and the gateway's
   `infer` time per batch (one batch: what "delayed by more than one batch" is measured against);
2. each hostile case in turn, one upload each: the gateway's resident memory (psutil, every 5 ms)
   from just before the upload until its answer, as the peak above the RSS just before; the answer's
   status and time; and the steady client's requests that overlapped the upload: their worst latency
   minus the baseline median, against one batch.
Every payload is built before the server starts, so building them costs the gateway nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import tifffile
from PIL import Image

from bench.model_speed import random_version
from bench.service_load import free_port, start_server, synthetic_pair
from model.checkpoint import save_version
from model.data.decode import DEFAULT_MAX_PIXELS
from model.network.presets import SHIPPED_PRESET, preset_config

MIB = 1024 * 1024
MEMORY_TARGET_MB = 200


@dataclass
class HostileCase:
    """One upload: `send(url)` posts it and returns the HTTP status."""

    name: str
    send: Callable[[str], int]
    expected: str


@dataclass
class CaseResult:
    name: str
    expected: str
    status: int
    seconds: float
    rss_before_mb: float
    peak_above_mb: float
    ingest_peak_mb: float  # the gateway's ingest processes together (0 when none ran)
    steady_requests: int
    steady_worst_ms: float | None
    steady_delay_ms: float | None


@dataclass
class SteadyClient:
    """Inspects one part in a closed loop; keeps (start, end, status, infer ms) of every request."""

    url: str
    files: dict
    records: list[tuple[float, float, int, float | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                response = client.post(f"{self.url}/inspect", files=self.files)
                infer = response.json()["timings_ms"].get("infer") if response.status_code == 200 else None
                self.records.append((started, time.perf_counter(), response.status_code, infer))

    def overlapping(self, start: float, end: float) -> list[tuple[float, float, int, float | None]]:
        return [record for record in self.records if record[0] < end and record[1] > start]


def _ingest_processes(gateway: psutil.Process) -> list[psutil.Process]:
    """The gateway's ingest processes (spawned pool workers); not redis-server, not the resource
    tracker."""
    found = []
    for child in gateway.children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:  # a child that just ended
        return 0


class RssSampler:
    """Peak resident memory while a `with` block runs: of the gateway process, and (separately) the
    sum over its ingest processes."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.process, self.interval_s = psutil.Process(pid), interval_s
        self.peak = self.before = 0
        self.children_before = self.children_peak = 0

    def _children_rss(self) -> int:
        return sum(_rss(child) for child in _ingest_processes(self.process))

    def __enter__(self) -> RssSampler:
        self.before = self.peak = _rss(self.process)
        self.children_before = self.children_peak = self._children_rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.process))
            self.children_peak = max(self.children_peak, self._children_rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(self.process))


# ----------------------------------------------------------------------------- payloads


def _tiff(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def multi_page_tiff(pages: int) -> bytes:
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as writer:
        for _ in range(pages):
            writer.write(np.zeros((1, 1), np.float32), contiguous=False)
    return buffer.getvalue()


def npy_declaring(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


def largest_rgb_png(side: int) -> bytes:
    """Noise: PNG cannot compress it, so the file is as large as an image of this size gets."""
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def tar_gz(add: Callable[[tarfile.TarFile], None], level: int = 9) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=level) as bundle:
        add(bundle)
    return buffer.getvalue()


def good_pairs(bundle: tarfile.TarFile, rgb: bytes, depth: bytes, count: int = 6) -> None:
    for index in range(count):
        for name, data in ((f"good/rgb/{index:03d}.png", rgb), (f"good/xyz/{index:03d}.tiff", depth)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            bundle.addfile(info, io.BytesIO(data))


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def hidden_big_member(size: int) -> Callable[[tarfile.TarFile], None]:
    def add(bundle: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("good/.cache.bin")
        info.size = size
        bundle.addfile(info, io.BufferedReader(_Zeros(size), MIB))

    return add


def hidden_entries(count: int) -> Callable[[tarfile.TarFile], None]:
    def add(bundle: tarfile.TarFile) -> None:
        for index in range(count):
            bundle.addfile(tarfile.TarInfo(f"good/.hidden-{index}"), io.BytesIO())

    return add


def zip_bomb(size: int) -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle,
        bundle.open("good/rgb/000.png", "w") as out,
    ):
        for _ in range(size // MIB):
            out.write(bytes(MIB))
    return buffer.getvalue()


def many_fields_body(count: int) -> tuple[bytes, str]:
    boundary = "hostile-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(count)
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


# ----------------------------------------------------------------------------- senders


def post_files(path: str, files: dict, data: dict | None = None) -> Callable[[str], int]:
    def send(url: str) -> int:
        return httpx.post(f"{url}{path}", files=files, data=data or {}, timeout=300).status_code

    return send


def post_raw(path: str, body: bytes, content_type: str) -> Callable[[str], int]:
    def send(url: str) -> int:
        headers = {"content-type": content_type}
        return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=300).status_code

    return send


def declare_length(path: str, length: int) -> Callable[[str], int]:
    """Headers that announce `length` bytes, then nothing: the answer must come before any body."""

    def send(url: str) -> int:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as connection:
            connection.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
                f"Content-Type: multipart/form-data; boundary=x\r\n\r\n".encode()
            )
            return int(connection.recv(4096).split(b" ", 2)[1])

    return send


def pax_header(size: int) -> Callable[[tarfile.TarFile], None]:
    def add(bundle: tarfile.TarFile) -> None:
        info = tarfile.TarInfo("good/notes.txt")
        info.pax_headers = {"comment": "x" * size}
        bundle.addfile(info, io.BytesIO())

    return add


def with_good_pairs(
    add: Callable[[tarfile.TarFile], None], rgb: bytes, depth: bytes, level: int = 9
) -> bytes:
    def both(bundle: tarfile.TarFile) -> None:
        add(bundle)
        good_pairs(bundle, rgb, depth)

    return tar_gz(both, level)


def inspect_cases(part_rgb: bytes, side: int) -> list[HostileCase]:
    def with_depth(name: str, depth: bytes) -> Callable[[str], int]:
        return post_files("/inspect", {"rgb": ("part.png", part_rgb), "depth": (name, depth)})

    float64_xyz = _tiff(np.zeros((side, side, 3)), photometric="rgb", compression="zlib")
    largest = {
        "rgb": ("big.png", largest_rgb_png(side)),
        "depth": ("big.tiff", _tiff(np.full((side, side), 0.5, np.float32))),
    }
    return [
        HostileCase(
            "depth TIFF of 30,000 pages (7.7 MB)", with_depth("d.tiff", multi_page_tiff(30_000)), "400"
        ),
        HostileCase(
            f".npy header declaring {side}x{side}x3 float64 (402 MB)",
            with_depth("d.npy", npy_declaring((side, side, 3))),
            "413",
        ),
        HostileCase(
            f"zlib float64 xyz TIFF at the pixel limit ({len(float64_xyz) // 1000} kB, 402 MB decoded)",
            with_depth("d.tiff", float64_xyz),
            "413",
        ),
        HostileCase("Content-Length of 1 GB on /inspect, no body", declare_length("/inspect", 10**9), "413"),
        HostileCase(
            f"legitimate, at the limits: {side}x{side} noise PNG + float32 z TIFF",
            post_files("/inspect", largest),
            "200",
        ),
    ]


def enrolment_cases(rgb: bytes, depth: bytes, tiny_rgb: bytes, tiny_depth: bytes) -> list[HostileCase]:
    names = iter(
        f"hostile{index}" for index in range(100)
    )  # a refused upload frees its name, an accepted one not

    def archive(name: str, data: bytes) -> Callable[[str], int]:
        return post_files("/enroll-object", {"archive": (name, data)}, {"object": next(names)})

    body, content_type = many_fields_body(10_000)
    return [
        HostileCase(
            "Content-Length of 8 GB on /enroll-object, no body",
            declare_length("/enroll-object", 8 * 1024**3),
            "413",
        ),
        HostileCase("10,000 form fields", post_raw("/enroll-object", body, content_type), "400"),
        HostileCase(
            "tar.gz with a 50 MB PAX header", archive("a.tar.gz", tar_gz(pax_header(50 * 10**6))), "422"
        ),
        HostileCase(
            "tar.gz of 300,000 hidden entries + 6 pairs",
            archive("a.tar.gz", with_good_pairs(hidden_entries(300_000), rgb, depth)),
            "413",
        ),
        HostileCase(
            "tar.gz (~0.5 MB) with a hidden 512 MiB member + 6 pairs of 32 px",
            archive("a.tar.gz", with_good_pairs(hidden_big_member(512 * MIB), tiny_rgb, tiny_depth)),
            "413",
        ),
        HostileCase("zip bomb (1 GiB of zeros)", archive("a.zip", zip_bomb(1024 * MIB)), "413"),
        HostileCase(
            "legitimate, within the limits: tar.gz (gzip -1) with a hidden 512 MiB member + 6 pairs",
            archive("a.tar.gz", with_good_pairs(hidden_big_member(512 * MIB), rgb, depth, level=1)),
            "202",
        ),
    ]


# ----------------------------------------------------------------------------- the run


def prepare_data_dir(root: Path) -> str:
    """A data folder holding a random-weight network of the shipped preset; returns its version."""
    model = random_version(preset_config(SHIPPED_PRESET), objects=2)
    save_version(model.net, model.manifest, root / "models" / model.manifest.version)
    return model.manifest.version


def activate(url: str, version: str, timeout_s: float = 120.0) -> None:
    """Through the API, as an operator rolls a version out; returns once the gateway serves it."""
    httpx.post(f"{url}/models/{version}/activate", timeout=60).raise_for_status()
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/readyz", timeout=10).json().get("model_version") != version:
        if time.monotonic() > deadline:
            raise SystemExit(f"the gateway did not start serving {version}")
        time.sleep(0.2)


def run_case(case: HostileCase, url: str, pid: int, steady: SteadyClient, baseline_ms: float) -> CaseResult:
    time.sleep(1.0)  # let the gateway settle: "before" is an idle-ish RSS between steady requests
    with RssSampler(pid) as rss:
        started = time.perf_counter()
        status = case.send(url)
        ended = time.perf_counter()
    overlapping = [r for r in steady.overlapping(started, ended) if r[2] == 200]
    worst = max((1000 * (end - start) for start, end, _, _ in overlapping), default=None)
    return CaseResult(
        name=case.name,
        expected=case.expected,
        status=status,
        seconds=round(ended - started, 2),
        rss_before_mb=round(rss.before / MIB, 1),
        peak_above_mb=round((rss.peak - rss.before) / MIB, 1),
        ingest_peak_mb=round(rss.children_peak / MIB, 1),
        steady_requests=len(overlapping),
        steady_worst_ms=None if worst is None else round(worst, 1),
        steady_delay_ms=None if worst is None else round(worst - baseline_ms, 1),
    )


def baseline(steady: SteadyClient, seconds: float) -> tuple[float, float, float]:
    """(median latency ms, p99 latency ms, median infer ms) of the steady client alone."""
    start = time.perf_counter()
    time.sleep(seconds)
    records = [r for r in steady.overlapping(start, time.perf_counter()) if r[2] == 200]
    latencies = sorted(1000 * (end - begin) for begin, end, _, _ in records)
    infers = [infer for *_, infer in records if infer is not None]
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    return statistics.median(latencies), p99, statistics.median(infers)


def markdown(results: list[CaseResult], base: tuple[float, float, float], idle_mb: float, size: int) -> str:
    median_ms, p99_ms, infer_ms = base
    lines = [
        f"Gateway idle RSS {idle_mb:.0f} MB. Steady client alone ({size} px RGB + z): median {median_ms:.0f} ms,",
        f"p99 {p99_ms:.0f} ms; one batch (`infer`, median) {infer_ms:.0f} ms. Delay = the steady client's worst",
        "latency during the upload minus its median alone.",
        "",
        "| upload | expected | status | s | RSS before MB | peak above MB | ingest processes MB "
        "| steady reqs | worst ms | delay ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.expected} | {r.status} | {r.seconds} | {r.rss_before_mb} | {r.peak_above_mb} "
            f"| {r.ingest_peak_mb} | {r.steady_requests} | {r.steady_worst_ms} | {r.steady_delay_ms} |"
        )
    hostile = [r for r in results if not r.name.startswith("legitimate")]
    worst_memory = max(r.peak_above_mb for r in hostile)
    delays = [r.steady_delay_ms for r in hostile if r.steady_delay_ms is not None]
    lines += [
        "",
        f"Hostile uploads: worst peak {worst_memory} MB above the RSS before (target {MEMORY_TARGET_MB}: "
        f"{'met' if worst_memory <= MEMORY_TARGET_MB else 'NOT met'}); worst delay of the steady client "
        f"{max(delays, default=0):.0f} ms against one batch of {infer_ms:.0f} ms "
        f"({'met' if max(delays, default=0) <= infer_ms else 'NOT met'}).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=400, help="the steady client's part, px square")
    parser.add_argument("--baseline-s", type=float, default=15.0)
    parser.add_argument("--out", type=Path, help="also write the markdown section here")
    args = parser.parse_args(argv)

    side = int(DEFAULT_MAX_PIXELS**0.5)
    rgb, depth = synthetic_pair(args.size, seed=3, depth_format="z")
    print("building payloads ...", file=sys.stderr)
    tiny_rgb, tiny_depth = synthetic_pair(32, seed=4, depth_format="z")
    cases = [*inspect_cases(rgb, side), *enrolment_cases(rgb, depth, tiny_rgb, tiny_depth)]
    with tempfile.TemporaryDirectory(prefix="iumad-hostile-") as folder:
        root = Path(folder)
        version = prepare_data_dir(root / "data")
        os.environ["IUMAD_EMBEDDED_WORKER"] = "false"
        port = free_port()
        server = start_server(str(root / "data"), port, root / "gateway.log")
        url = f"http://127.0.0.1:{port}"
        steady = SteadyClient(url, {"rgb": ("part.png", rgb), "depth": ("part.tiff", depth)})
        thread = threading.Thread(target=steady.run, daemon=True)
        try:
            activate(url, version)
            thread.start()
            time.sleep(5.0)  # warm-up: the first requests grow the gateway's pools
            idle_mb = psutil.Process(server.pid).memory_info().rss / MIB
            base = baseline(steady, args.baseline_s)
            results = []
            for case in cases:
                results.append(run_case(case, url, server.pid, steady, base[0]))
                print(results[-1], file=sys.stderr)
        finally:
            steady.stop.set()
            thread.join(timeout=60)
            server.terminate()
            server.wait(timeout=60)
    report = markdown(results, base, idle_mb, args.size)
    print(report)
    if args.out:
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
