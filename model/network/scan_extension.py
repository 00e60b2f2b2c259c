"""The fused CPU selective scan (`csrc/selective_scan_cpu.cpp`): build once, load anywhere.

The pure-PyTorch loop in `selective_scan.py` stays the reference path and the fallback (it also
exports to ONNX); this extension makes a scan about 4x and a CPU training step about 3x cheaper.
It is compiled once (`make install` runs `python -m model.network.scan_extension`, about 30 s) into
`$TORCH_EXTENSIONS_DIR` (default `~/.cache/torch_extensions`) under a name that hashes the source,
the compile flags, the torch version and the Python ABI, so a stale build is never loaded. A machine
without a compiler loads a build made elsewhere (the Docker images copy it from their build stage);
where neither works the scan falls back to the loop and says so once in the log.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
# -ffast-math lets GCC vectorise exp over the state dimension (glibc's libmvec); no -march, so a
# build runs on any x86-64 the wheel of torch runs on.
CFLAGS = ["-O3", "-ffast-math"]

_lock = threading.Lock()
_module: ModuleType | None = None
_attempted = False
_enabled = True


def extension_name() -> str:
    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    digest.update(torch.__version__.encode())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())  # the ABI, not the patch
    return f"iumad_selective_scan_{digest.hexdigest()[:12]}"


def extensions_root() -> Path:
    configured = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "torch_extensions"


def _built_library(directory: Path, name: str) -> Path | None:
    for candidate in sorted(directory.glob(f"{name}*.so")):
        return candidate
    return None


def _import_library(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(verbose: bool = False) -> ModuleType:
    """Compile (or reuse) the extension; raises when no working compiler is available."""
    from torch.utils.cpp_extension import load

    name = extension_name()
    directory = extensions_root() / name
    directory.mkdir(parents=True, exist_ok=True)
    return load(
        name=name,
        sources=[str(SOURCE)],
        extra_cflags=CFLAGS,
        build_directory=str(directory),
        verbose=verbose,
    )


def load_extension() -> ModuleType | None:
    """The compiled module, or None (fused scan disabled, or not built)."""
    global _module, _attempted
    if not _enabled:
        return None
    if _module is not None or _attempted:
        return _module
    with _lock:
        if _attempted:
            return _module
        name = extension_name()
        library = _built_library(extensions_root() / name, name)
        if library is None:  # never compiled on a forward pass: `make install` and the image build it
            log.warning(
                "fused CPU selective scan not built (`python -m model.network.scan_extension` builds it); "
                "using the PyTorch loop"
            )
            _module = None
        else:
            try:
                _module = _import_library(library, name)
            except Exception as error:  # noqa: BLE001 - a stale or broken build: the loop still works
                log.warning("fused CPU selective scan unavailable (%s); using the PyTorch loop", error)
                _module = None
        _attempted = True
    return _module


def set_enabled(enabled: bool) -> None:
    """Switch the fused scan off (or back on) for this process: benchmarks compare both paths."""
    global _enabled
    _enabled = enabled


def is_enabled() -> bool:
    return _enabled


if __name__ == "__main__":
    # Part of `make install`: a machine without a compiler still installs and runs (on the loop).
    try:
        build(verbose="-v" in sys.argv)
    except Exception as error:  # noqa: BLE001
        print(f"warning: fused selective scan not built ({error}); the PyTorch loop will be used")
    else:
        print(f"built {extension_name()} in {extensions_root()}")
