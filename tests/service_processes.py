"""Real processes for the enrolment and hot-swap tests: a private Redis, workers, gateways, sample archives.

Every test gets its own `redis-server` (never the shared one on 6379) and its own data directory, and
trains tiny models (64 px, one small layer, two epochs) so a whole enrolment takes seconds.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from iumad import embedded
from iumad.embedded import RedisServerProcess, free_port

TINY_NETWORK = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "state_size": 4}


def tiny_env(data_dir: Path, redis_url: str | None, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("IUMAD_")}
    env.update(
        {
            "IUMAD_DATA_DIR": str(data_dir),
            "IUMAD_NETWORK_CONFIG": json.dumps({**TINY_NETWORK, "image_size": 64}),
            "IUMAD_TRAIN_EPOCHS": "2",
            "IUMAD_JOB_HEARTBEAT_TIMEOUT_S": "6",
            "IUMAD_RECONCILE_INTERVAL_S": "1",
            "IUMAD_TORCH_THREADS": "1",
            "IUMAD_DEVICE": "cpu",
            "IUMAD_CANCEL_GRACE_S": "3",
            "IUMAD_MIN_HOLDOUT_SAMPLES": "2",  # tiny synthetic objects: a few pairs each
            # A 2-epoch model at 64 px scored on a handful of holdout parts moves its AUROC by 0.1
            # from run to run: tests whose subject is not the guard accept any drop; the guard's
            # own tests set a strict margin.
            "IUMAD_FORGETTING_MARGIN": "1",
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if redis_url is not None:
        env["IUMAD_REDIS_URL"] = redis_url
    env.update(extra)
    return env


def start_redis(directory: Path) -> RedisServerProcess:
    server = RedisServerProcess(directory, use_unix_socket=False, appendonly=True)
    server.start()
    return server


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = log_path.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "iumad.cli", "worker"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()


def start_gateway(
    env: dict[str, str], log_path: Path, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    env = {**env, "IUMAD_HOST": "127.0.0.1", "IUMAD_PORT": str(port)}
    log = log_path.open("ab")
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "iumad.cli", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()
    return process, f"http://127.0.0.1:{port}"


def stop_process(process: subprocess.Popen | None, timeout_s: float = 15.0) -> None:
    embedded.stop_process(process, timeout_s)


def wait_until(
    condition: Callable[[], object], timeout_s: float, interval_s: float = 0.2, what: str = "condition"
) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def mvtec_zip(
    synthetic_root: Path, object_name: str, splits: tuple[str, ...] = ("train", "validation")
) -> bytes:
    """One object's normal samples as an MVTec 3D-AD style zip (the operator's upload)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for split in splits:
            folder = synthetic_root / object_name / split / "good"
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    bundle.write(path, f"{object_name}/{path.relative_to(synthetic_root / object_name)}")
    return buffer.getvalue()


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def http_ready(url: str, path: str = "/healthz") -> bool:
    import httpx

    try:
        return httpx.get(url + path, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def part_files(rgb, depth) -> dict[str, tuple[str, bytes]]:
    """A part's images as an inspection's multipart files: PNG RGB, float32 TIFF depth."""
    import io

    import numpy as np
    import tifffile
    from PIL import Image

    png, tiff = io.BytesIO(), io.BytesIO()
    Image.fromarray(rgb).save(png, format="PNG")
    tifffile.imwrite(tiff, np.asarray(depth, dtype=np.float32))
    return {"rgb": ("part.png", png.getvalue()), "depth": ("part.tiff", tiff.getvalue())}
