"""Load generator for the gateway, with the model's offline batched throughput measured in the same run.

    python -m bench.service_load --url http://127.0.0.1:8000 --version-dir DATA/models/<version>
    python -m bench.service_load --start-server DATA_DIR --clients 8 --seconds 300   # spawns `iumad serve`

Phases, one after the other so they do not compete for the CPU:
1. single: one client, sequential requests -> the single-request latency (p50);
2. load: N concurrent clients (closed loop) for T seconds -> throughput, p50/p99, failures, and the
   CPU the gateway and this load generator used per request; split into --rounds rounds, each
   followed by
3. offline: the same model version in this process, `prepare_inputs` + `predict_prepared` on batches
   of --batch, decoding the same files each time -> the work's batched throughput, while the gateway
   idles. The service's throughput is
   reported as a fraction of it: the median over the rounds of (service round / offline right after);
4. half (optional, --half-load): open loop at half the measured throughput -> p99 at that load.
Every request posts the same RGB PNG and depth file (`--size` px, `--depth` xyz | z | png16 | none),
encoded once, up front.
The server's RSS (from /metrics) is read before and after the load phases, to show drift.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np
import tifffile
from PIL import Image

from iumad.embedded import free_port


@dataclass
class PhaseResult:
    name: str
    seconds: float
    requests: int
    failures: int
    throughput_rps: float
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    failure_kinds: dict[str, int] = field(default_factory=dict)


DEPTH_FORMATS = ("xyz", "z", "png16", "none")


def synthetic_pair(size: int, seed: int = 0, depth_format: str = "z") -> tuple[bytes, bytes | None]:
    """A textured RGB PNG and its depth, `size` px square, with a corner of sensor dropouts.

    Depth formats: `xyz` a float32 HxWx3 TIFF with (0, 0, 0) = missing (MVTec 3D-AD), `z` a float32
    HxW TIFF (metres), `png16` a 16-bit greyscale PNG (raw units, 0 = missing), `none` RGB only.
    """
    if depth_format not in DEPTH_FORMATS:
        raise ValueError(f"unknown depth format {depth_format!r}")
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    rgb = np.stack([120 + 40 * np.sin(xx / 7), 110 + 30 * np.cos(yy / 9), 90 + 0 * xx], -1)
    rgb = np.clip(rgb + rng.normal(0, 5, rgb.shape), 0, 255).astype(np.uint8)
    z = (0.6 + 0.01 * np.sin(xx / 11) + rng.normal(0, 1e-4, (size, size))).astype(np.float32)
    z[: size // 20, : size // 20] = 0.0
    rgb_buffer, depth_buffer = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(rgb_buffer, format="PNG")
    if depth_format == "none":
        return rgb_buffer.getvalue(), None
    if depth_format == "xyz":
        xyz = np.stack([xx * 1e-4, yy * 1e-4, z], axis=-1).astype(np.float32)
        xyz[z == 0] = 0.0
        tifffile.imwrite(depth_buffer, xyz)
    elif depth_format == "png16":
        Image.fromarray(np.rint(z * 50_000).astype(np.uint16)).save(depth_buffer, format="PNG")
    else:
        tifffile.imwrite(depth_buffer, z)
    return rgb_buffer.getvalue(), depth_buffer.getvalue()


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(1000 * float(np.percentile(latencies, q)), 2) if latencies else None


def summarise(name: str, seconds: float, latencies: list[float], failures: dict[str, int]) -> PhaseResult:
    count = len(latencies) + sum(failures.values())
    return PhaseResult(
        name,
        round(seconds, 2),
        count,
        sum(failures.values()),
        round(len(latencies) / seconds, 2),
        percentile_ms(latencies, 50),
        percentile_ms(latencies, 99),
        round(1000 * max(latencies), 2) if latencies else None,
        dict(failures),
    )


class Inspector:
    """Posts the pair and records latency or the kind of failure."""

    def __init__(self, client: httpx.AsyncClient, url: str, files: dict, data: dict) -> None:
        self.client, self.url, self.files, self.data = client, url, files, data
        self.latencies: list[float] = []
        self.failures: dict[str, int] = {}

    async def once(self) -> None:
        started = time.perf_counter()
        try:
            response = await self.client.post(f"{self.url}/inspect", files=self.files, data=self.data)
            kind = None if response.status_code == 200 else f"http {response.status_code}"
        except httpx.HTTPError as error:
            kind = type(error).__name__
        if kind is None:
            self.latencies.append(time.perf_counter() - started)
        else:
            self.failures[kind] = self.failures.get(kind, 0) + 1


class VersionedInspector(Inspector):
    """Also records when each request started and which model version answered it."""

    def __init__(self, client: httpx.AsyncClient, url: str, files: dict, data: dict) -> None:
        super().__init__(client, url, files, data)
        self.answers: list[tuple[float, float, str | None]] = []  # (started, seconds, version)

    async def once(self) -> None:
        started = time.perf_counter()
        try:
            response = await self.client.post(f"{self.url}/inspect", files=self.files, data=self.data)
        except httpx.HTTPError as error:
            self.failures[type(error).__name__] = self.failures.get(type(error).__name__, 0) + 1
            return
        if response.status_code != 200:
            kind = f"http {response.status_code}"
            self.failures[kind] = self.failures.get(kind, 0) + 1
            return
        elapsed = time.perf_counter() - started
        self.latencies.append(elapsed)
        self.answers.append((started, elapsed, response.json().get("model_version")))


async def swap_phase(client: httpx.AsyncClient, args: argparse.Namespace, files: dict, data: dict) -> dict:
    """8 clients inspect continuously; half-way, --swap-to is activated (POST /models/{v}/activate).

    Visibility: time from the activation call's answer to the first /readyz (polled every 20 ms)
    naming the new version. Added latency: requests in flight during the swap (started within 1 s
    before activation up to 1 s after it became visible) against the steady state before it.
    """
    inspector = VersionedInspector(client, args.url, files, data)
    old_version = (await client.get(f"{args.url}/readyz")).json().get("model_version")
    timeline: dict[str, float] = {}

    async def swap() -> None:
        await asyncio.sleep(args.swap_seconds / 2)
        timeline["requested"] = time.perf_counter()
        response = await client.post(f"{args.url}/models/{args.swap_to}/activate")
        if response.status_code != 200:
            raise SystemExit(f"cannot activate {args.swap_to}: {response.status_code} {response.text}")
        timeline["activated"] = time.perf_counter()
        while (await client.get(f"{args.url}/readyz")).json().get("model_version") != args.swap_to:
            await asyncio.sleep(0.02)
        timeline["visible"] = time.perf_counter()

    await asyncio.gather(closed_loop(inspector, args.clients, args.swap_seconds), swap())
    before = [seconds for started, seconds, _ in inspector.answers if started < timeline["requested"] - 1.0]
    window = [
        seconds
        for started, seconds, _ in inspector.answers
        if timeline["requested"] - 1.0 <= started <= timeline["visible"] + 1.0
    ]
    versions = [version for _, _, version in inspector.answers]
    after_swap = [version for started, _, version in inspector.answers if started > timeline["visible"]]
    return {
        "from": old_version,
        "to": args.swap_to,
        "requests": len(inspector.answers),
        "failures": dict(inspector.failures),
        "versions_seen": sorted({str(v) for v in versions}),
        "only_new_after_visible": all(v == args.swap_to for v in after_swap),
        "visible_after_activation_s": round(timeline["visible"] - timeline["activated"], 3),
        "steady_p50_ms": percentile_ms(before, 50),
        "steady_p99_ms": percentile_ms(before, 99),
        "swap_window_p50_ms": percentile_ms(window, 50),
        "swap_window_max_ms": round(1000 * max(window), 1) if window else None,
    }


async def closed_loop(inspector: Inspector, clients: int, seconds: float) -> float:
    deadline = time.perf_counter() + seconds

    async def client_loop() -> None:
        while time.perf_counter() < deadline:
            await inspector.once()

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return time.perf_counter() - started


async def open_loop(inspector: Inspector, rate: float, seconds: float) -> float:
    """Requests at a fixed rate, whatever the answers' latency (what a line of cameras does)."""
    interval = 1.0 / rate
    started = time.perf_counter()
    tasks = []
    next_at = started
    while next_at < started + seconds:
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.create_task(inspector.once()))
        next_at += interval
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


async def activate(client: httpx.AsyncClient, url: str, version: str, timeout_s: float = 120.0) -> dict:
    """Make `version` the active one (operator endpoint) and wait until this gateway serves it."""
    response = await client.post(f"{url}/models/{version}/activate")
    if response.status_code != 200:
        raise SystemExit(f"cannot activate {version}: {response.status_code} {response.text}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = (await client.get(f"{url}/readyz")).json()
        if ready.get("model_version") == version:
            return ready
        await asyncio.sleep(0.2)
    raise SystemExit(f"the gateway did not swap to {version} within {timeout_s:.0f} s")


async def server_process_metric(client: httpx.AsyncClient, url: str, name: str) -> float | None:
    """One of the gateway's `process_*` gauges from /metrics (None when it cannot be read)."""
    try:
        text = (await client.get(f"{url}/metrics")).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


async def server_rss_mb(client: httpx.AsyncClient, url: str) -> float | None:
    value = await server_process_metric(client, url, "process_resident_memory_bytes")
    return None if value is None else round(value / 2**20, 1)


def cpu_per_request_ms(cpu_seconds: float | None, phase: PhaseResult) -> float | None:
    return (
        round(1000 * cpu_seconds / phase.requests, 2) if cpu_seconds is not None and phase.requests else None
    )


async def run_service_phases(args: argparse.Namespace, rgb: bytes, depth: bytes | None) -> dict:
    """Single client, then `--clients` alternated with the offline model, then the optional half
    load, swap and soak phases, all against the gateway at `args.url`."""
    files = {"rgb": ("part.png", rgb, "image/png")}
    if depth is not None:
        files["depth"] = ("part.depth", depth, "application/octet-stream")
    data = {"mask": args.mask}
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    limits = httpx.Limits(
        max_connections=max(args.clients, 64), max_keepalive_connections=max(args.clients, 64)
    )
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:
        ready = await _serving(client, args)
        for _ in range(5):  # warm the connections and the server's code paths
            await Inspector(client, args.url, files, data).once()
        rss_before = await server_rss_mb(client, args.url)

        single = Inspector(client, args.url, files, data)
        single_seconds = await closed_loop(single, 1, args.single_seconds)
        offline = OfflineModel.load(args, ready.get("model_version"), rgb, depth)
        load = Inspector(client, args.url, files, data)
        alternated = await _alternated_rounds(client, args, load, offline)
        phases = [
            summarise("single", single_seconds, single.latencies, single.failures),
            summarise(f"load x{args.clients}", alternated.load_seconds, load.latencies, load.failures),
        ]
        # Where the two cores went during the load phase: the gateway process (model included) and
        # this load generator, which shares the machine with it.
        server_cpu, client_cpu = alternated.server_cpu_s, alternated.client_cpu_s
        load_cpu = {
            "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
            "server_cpu_ms_per_request": cpu_per_request_ms(server_cpu, phases[1]),
            "client_cpu_s": round(client_cpu, 2),
            "client_cpu_ms_per_request": cpu_per_request_ms(client_cpu, phases[1]),
        }
        if args.half_load and load.latencies:
            half = Inspector(client, args.url, files, data)
            rate = max(0.5, phases[1].throughput_rps / 2)
            half_seconds = await open_loop(half, rate, max(5.0, args.seconds / 2))
            phases.append(summarise(f"half load ({rate:.1f}/s)", half_seconds, half.latencies, half.failures))
        rss_after = await server_rss_mb(client, args.url)
        swap = await swap_phase(client, args, files, data) if args.swap_to else None
        soak = None
        if args.soak_seconds > 0 and load.latencies:
            soak = await soak_phase(client, args, files, data, args.soak_fraction * phases[1].throughput_rps)
            phases.append(soak.pop("phase"))
    return {
        "model_version": ready.get("model_version"),
        "device": ready.get("device"),
        "phases": [asdict(phase) for phase in phases],
        "server_rss_mb": {"before": rss_before, "after": rss_after},
        "load_cpu": load_cpu,
        "rounds": alternated.rounds,
        "offline": None if offline is None else offline.describe(alternated.rounds),
        "soak": soak,
        "swap": swap,
    }


async def _serving(client: httpx.AsyncClient, args: argparse.Namespace) -> dict:
    """The gateway's /readyz once it serves (`--activate` first, when given)."""
    ready = (await client.get(f"{args.url}/readyz")).json()
    if args.activate and ready.get("model_version") != args.activate:
        ready = await activate(client, args.url, args.activate)
    if not ready.get("ready") or ready.get("state") != "ready":
        raise SystemExit(f"the gateway is not serving a model: {ready}")
    return ready


@dataclass
class AlternatedRounds:
    rounds: list[dict]  # per round: service req/s, and the offline model's pairs/s and their ratio
    load_seconds: float
    client_cpu_s: float
    server_cpu_s: float | None  # None when the gateway does not export its process CPU


async def _alternated_rounds(
    client: httpx.AsyncClient, args: argparse.Namespace, load: Inspector, offline: OfflineModel | None
) -> AlternatedRounds:
    """Service and offline alternate, so that a slower minute of a shared machine weighs on both."""
    result = AlternatedRounds(rounds=[], load_seconds=0.0, client_cpu_s=0.0, server_cpu_s=0.0)
    for _ in range(args.rounds):
        requests_before = len(load.latencies) + sum(load.failures.values())
        server_cpu_before = await server_process_metric(client, args.url, "process_cpu_seconds_total")
        client_cpu_before = time.process_time()
        seconds = await closed_loop(load, args.clients, args.seconds / args.rounds)
        result.client_cpu_s += time.process_time() - client_cpu_before
        server_cpu_after = await server_process_metric(client, args.url, "process_cpu_seconds_total")
        if result.server_cpu_s is not None and server_cpu_before is not None and server_cpu_after is not None:
            result.server_cpu_s += server_cpu_after - server_cpu_before
        else:
            result.server_cpu_s = None
        result.load_seconds += seconds
        answered = len(load.latencies) + sum(load.failures.values()) - requests_before
        entry = {"service_rps": round(answered / seconds, 2)}
        if offline is not None:
            measured = await asyncio.to_thread(offline.measure, args.offline_seconds / args.rounds)
            entry |= {
                "offline_ips": measured["throughput_ips"],
                "ratio": round(entry["service_rps"] / measured["throughput_ips"], 3),
                "offline_cpu_ms_per_pair": measured["cpu_ms_per_pair"],
            }
        result.rounds.append(entry)
    return result


async def soak_phase(
    client: httpx.AsyncClient, args: argparse.Namespace, files: dict, data: dict, rate: float
):
    """Open loop at `rate` for --soak-seconds, the server's RSS sampled every --rss-every seconds.

    Drift is stated as the RSS at the end minus the RSS after the first sampling interval (the first
    minutes include allocator warm-up that a flat process does not repeat).
    """
    soak = Inspector(client, args.url, files, data)
    samples: list[tuple[float, float | None]] = []
    started = time.perf_counter()

    async def sample_rss() -> None:
        while True:
            samples.append((round(time.perf_counter() - started, 1), await server_rss_mb(client, args.url)))
            await asyncio.sleep(args.rss_every)

    sampler = asyncio.create_task(sample_rss())
    try:
        seconds = await open_loop(soak, rate, args.soak_seconds)
    finally:
        sampler.cancel()
    samples.append((round(time.perf_counter() - started, 1), await server_rss_mb(client, args.url)))
    values = [value for _, value in samples if value is not None]
    drift = round(values[-1] - values[1], 1) if len(values) > 2 else None
    return {
        "phase": summarise(
            f"soak ({rate:.1f}/s, {args.soak_seconds:.0f} s)", seconds, soak.latencies, soak.failures
        ),
        "rate_rps": round(rate, 2),
        "rss_samples_mb": samples,
        "rss_drift_mb": drift,
    }


class OfflineModel:
    """The same work without HTTP, batched: decoding, preprocessing and the model call.

    Loaded in this process once, measured between the load rounds while the gateway idles. Each
    measurement runs in a worker thread, like the gateway's inference thread: on a CPU shared with
    other processes, PyTorch's intra-op threads driven from the main thread can be many times slower
    (an OpenMP team waiting on descheduled threads), which would flatter the service.
    """

    def __init__(self, model, rgb: bytes, depth: bytes | None, batch: int) -> None:
        self.model, self.rgb, self.depth, self.batch = model, rgb, depth, batch

    @classmethod
    def load(cls, args: argparse.Namespace, model_version: str | None, rgb: bytes, depth: bytes | None):
        version_dir = find_version_dir(args, model_version)
        if version_dir is None or args.offline_seconds <= 0:
            return None
        from core.settings import get_settings
        from model.export import load_serving_model
        from service.runtime import resolve_device

        # The same backend the gateway serves with (IUMAD_INFERENCE_BACKEND), so the ratio compares
        # like with like.
        model = load_serving_model(version_dir, get_settings().inference_backend, resolve_device(args.device))
        offline = cls(model, rgb, depth, args.batch)
        offline.measure(0.0)  # warm-up
        return offline

    def decode(self):
        """The request's decoding, as the gateway does it for every part."""
        from model.data.batches import InspectionInput
        from model.data.decode import decode_depth, decode_rgb

        depth = None if self.depth is None else decode_depth(self.depth)
        return InspectionInput(decode_rgb(self.rgb), depth)

    def measure(self, seconds: float) -> dict:
        from model.data.batches import prepare_inputs

        nothing = [None] * self.batch
        done, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while done == 0 or time.perf_counter() - started < seconds:
            items = [self.decode() for _ in range(self.batch)]
            self.model.predict_prepared(prepare_inputs(items, self.model.config), nothing)
            done += self.batch
        elapsed = time.perf_counter() - started
        return {
            "seconds": round(elapsed, 2),
            "throughput_ips": round(done / elapsed, 2),
            "cpu_ms_per_pair": round(1000 * (time.process_time() - cpu_started) / done, 2),
        }

    def describe(self, rounds: list[dict]) -> dict:

        values = [entry["offline_ips"] for entry in rounds]
        cpu = [entry["offline_cpu_ms_per_pair"] for entry in rounds]
        return {
            "version": self.model.version,
            "backend": self.model.backend,
            "batch": self.batch,
            "throughput_ips": round(float(np.median(values)), 2),
            "cpu_ms_per_pair": round(float(np.median(cpu)), 2),
        }


def find_version_dir(args: argparse.Namespace, model_version: str | None) -> Path | None:
    if args.version_dir:
        return Path(args.version_dir)
    data_dir = args.start_server or args.data_dir
    if data_dir and model_version:
        return Path(data_dir) / "models" / model_version
    return None


def start_server(data_dir: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "IUMAD_DATA_DIR": data_dir}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "iumad.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the gateway did not become ready; see {log_path}")


def print_report(report: dict) -> None:
    print(
        f"model {report['service']['model_version']} on {report['service']['device']}, "
        f"{report['size']} px pairs, {report['clients']} clients"
    )
    print(f"{'phase':<24}{'req':>7}{'fail':>6}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for phase in report["service"]["phases"]:
        print(
            f"{phase['name']:<24}{phase['requests']:>7}{phase['failures']:>6}{phase['throughput_rps']:>9}"
            f"{phase['p50_ms']!s:>9}{phase['p99_ms']!s:>9}{phase['max_ms']!s:>9}"
        )
    offline = report.get("offline")
    if offline:
        print(
            f"offline batched ({offline.get('backend', 'torch')}, batch {offline['batch']}): "
            f"{offline['throughput_ips']} parts/s; "
            f"service/offline = {report['service_vs_offline']} (median of the rounds)"
        )
        for number, entry in enumerate(report["service"]["rounds"], 1):
            print(
                f"  round {number}: service {entry['service_rps']} req/s, offline {entry['offline_ips']} "
                f"pairs/s, ratio {entry['ratio']}"
            )
    cpu = report["service"]["load_cpu"]
    print(
        f"load phase CPU: gateway {cpu['server_cpu_s']} s ({cpu['server_cpu_ms_per_request']} ms/request), "
        f"load generator {cpu['client_cpu_s']} s ({cpu['client_cpu_ms_per_request']} ms/request)"
    )
    if offline and offline.get("cpu_ms_per_pair") is not None:
        print(f"offline CPU: {offline['cpu_ms_per_pair']} ms/pair")
    rss = report["service"]["server_rss_mb"]
    print(f"server RSS: {rss['before']} MB before load, {rss['after']} MB after")
    swap = report["service"].get("swap")
    if swap:
        print(
            f"hot swap {swap['from']} -> {swap['to']} under {report['clients']} clients: {swap['requests']} "
            f"requests, failures {swap['failures'] or 0}, versions {swap['versions_seen']}, only the new one "
            f"after the swap: {swap['only_new_after_visible']}; visible {swap['visible_after_activation_s']} s "
            f"after activation; latency steady p50 {swap['steady_p50_ms']} / p99 {swap['steady_p99_ms']} ms, "
            f"in the swap window p50 {swap['swap_window_p50_ms']} / max {swap['swap_window_max_ms']} ms"
        )
    soak = report["service"].get("soak")
    if soak:
        trace = ", ".join(f"{at:.0f}s {mb} MB" for at, mb in soak["rss_samples_mb"])
        print(f"soak RSS: {trace}; drift after the first interval {soak['rss_drift_mb']} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--start-server", metavar="DATA_DIR", help="spawn `iumad serve` on this data directory"
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the concurrent-load phase")
    parser.add_argument("--single-seconds", type=float, default=5.0)
    parser.add_argument("--half-load", action="store_true", help="also run an open-loop phase at half load")
    parser.add_argument(
        "--swap-to", metavar="VERSION", help="hot-swap phase: activate this version under load"
    )
    parser.add_argument("--swap-seconds", type=float, default=20.0, help="duration of the hot-swap phase")
    parser.add_argument("--soak-seconds", type=float, default=0.0, help="then an open-loop soak this long")
    parser.add_argument("--soak-fraction", type=float, default=0.8, help="soak rate / measured throughput")
    parser.add_argument("--rss-every", type=float, default=30.0, help="RSS sampling interval in the soak")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--depth", default="z", choices=DEPTH_FORMATS, help="depth file each request posts (none: RGB only)"
    )
    parser.add_argument("--mask", default="rle", choices=["none", "png", "rle"])
    parser.add_argument("--api-key", default=os.environ.get("IUMAD_BENCH_API_KEY"))
    parser.add_argument("--activate", metavar="VERSION", help="activate this version first (operator key)")
    parser.add_argument("--version-dir", help="model version for the offline measurement")
    parser.add_argument("--data-dir", help="the server's data directory (finds the served version's files)")
    parser.add_argument(
        "--batch", type=int, default=8, help="offline batch size (use the server's max batch)"
    )
    parser.add_argument(
        "--offline-seconds", type=float, default=10.0, help="offline measurement in all (0: none)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="split the load phase and the offline measurement into this many alternating rounds",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the report here")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.clients < 1 or args.seconds <= 0:
        parser.error("--rounds and --clients must be at least 1 and --seconds positive")

    rgb, depth = synthetic_pair(args.size, depth_format=args.depth)
    process = None
    if args.start_server:
        port = free_port()
        args.url = f"http://127.0.0.1:{port}"
        process = start_server(args.start_server, port, Path(args.start_server) / "bench-gateway.log")
    try:
        service = asyncio.run(run_service_phases(args, rgb, depth))
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(60)
    report: dict = {"url": args.url, "size": args.size, "clients": args.clients, "service": service}
    if service["offline"] is not None:
        report["offline"] = service["offline"]
        # The median of the rounds' ratios: each compares a service round with the offline
        # measurement right after it.
        report["service_vs_offline"] = round(float(np.median([r["ratio"] for r in service["rounds"]])), 3)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    failures = sum(phase["failures"] for phase in service["phases"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
