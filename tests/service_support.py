"""Shared pieces of the gateway tests: a tiny real model version, synthetic parts, file encoders.

The model is really trained (one epoch of a 64 px, 1-layer network on a few synthetic parts), once
per test process, and saved as a real version directory, so the gateway loads it the way it loads
production versions.
"""

from __future__ import annotations

import copy
import functools
import io
import time
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from core.settings import Settings
from model.checkpoint import save_version
from model.network.config import ModelConfig
from model.training.features import ObjectSamples
from model.training.options import TrainingOptions
from model.training.trainer import TrainingResult, train_version

HEIGHT, WIDTH = 80, 96  # not square and not the network's size: masks and maps must come back at this size


def part(
    kind: str, seed: int, height: int = HEIGHT, width: int = WIDTH, defect: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """A synthetic part: `alpha` (RGB + depth) or `beta` (RGB only); `defect` adds a bright bump."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    if kind == "alpha":
        base = np.stack([160 + 20 * np.sin(xx / 5), 90 + 10 * np.cos(yy / 7), 60 + 0 * xx], -1)
        depth = (0.5 + 0.01 * np.sin(xx / 9) + rng.normal(0, 1e-4, (height, width))).astype(np.float32)
    else:
        base = np.stack([50 + 0 * xx, 90 + 20 * np.sin(yy / 4), 180 + 10 * np.cos(xx / 6)], -1)
        depth = None
    rgb = base + rng.normal(0, 4, (height, width, 3))
    if defect:
        rgb[20:45, 30:60] = 255
        if depth is not None:
            depth[20:45, 30:60] += 0.05
    return np.clip(rgb, 0, 255).astype(np.uint8), depth


@functools.cache
def _trained() -> TrainingResult:
    def source(kind: str, seed: int):
        return lambda: part(kind, seed)

    objects = [
        ObjectSamples(
            "alpha", [source("alpha", i) for i in range(4)], [source("alpha", 100 + i) for i in range(2)]
        ),
        ObjectSamples(
            "beta", [source("beta", 200 + i) for i in range(4)], [source("beta", 300 + i) for i in range(2)]
        ),
    ]
    config = ModelConfig(image_size=64, hidden_size=32, num_layers=1, num_heads=4)
    return train_version(
        objects,
        config=config,
        options=TrainingOptions(epochs=1, batch_size=4),
        version="v20260101T000000-test01",
    )


def build_version(models_dir: Path, version: str | None = None, activate: bool = True) -> Path:
    """Save the tiny trained model as a version directory under `models_dir` (and point ACTIVE at it)."""
    result = _trained()
    manifest = copy.deepcopy(result.manifest)
    if version is not None:
        manifest.version = version
    directory = save_version(result.net, manifest, Path(models_dir) / manifest.version)
    if activate:
        (Path(models_dir) / "ACTIVE").write_text(manifest.version + "\n")
    return directory


def service_settings(data_dir: Path, **overrides) -> Settings:
    values = {
        "data_dir": data_dir,
        "device": "cpu",
        "decode_threads": 2,
        "max_batch_wait_ms": 2.0,
        "inspect_api_keys": [],
        "operator_api_keys": [],
        "min_holdout_samples": 2,  # tiny synthetic objects: a few pairs each
        **overrides,
    }
    return Settings(**values)


def wait_ready(client, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        body = response.json()
        if response.status_code == 200 and body["state"] in ("ready", "empty"):
            return body
        if body.get("state") == "failed" or time.monotonic() > deadline:
            raise AssertionError(f"gateway not ready: {body}")
        time.sleep(0.05)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def tiff_bytes(array: np.ndarray) -> bytes:
    """HxW as one grey page; HxWxC as one page of C interleaved samples (RGB for C = 3, like MVTec xyz)."""
    buffer = io.BytesIO()
    options = {}
    if array.ndim == 3:
        photometric = "rgb" if array.shape[-1] == 3 else "minisblack"
        options = {"photometric": photometric, "planarconfig": "contig"}
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def files_for(rgb: np.ndarray, depth: np.ndarray | None = None) -> dict[str, tuple[str, bytes, str]]:
    files = {"rgb": ("part.png", png_bytes(rgb), "image/png")}
    if depth is not None:
        files["depth"] = ("part.tiff", tiff_bytes(depth), "image/tiff")
    return files
