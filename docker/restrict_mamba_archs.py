"""Make mamba-ssm's setup.py compile its CUDA kernels only for the GPUs named in TORCH_CUDA_ARCH_LIST.

Why: mamba-ssm's setup.py hard-codes `-gencode` flags for about ten GPU generations (sm_75 ... sm_121 with
CUDA 13). Nine heavy .cu files times ten architectures is hours of nvcc. And while any `arch` flag is
present, torch's extension builder ignores TORCH_CUDA_ARCH_LIST. Deleting the hard-coded pairs leaves
the choice to torch, which then emits `-gencode` flags for exactly the architectures in the standard
TORCH_CUDA_ARCH_LIST variable (e.g. "9.0" for an H100/H200).

Used by docker/Dockerfile (CUDA builder stage) and bench/gpu_check.sh. Standard library only: it runs
before anything of ours is installed.

    python restrict_mamba_archs.py path/to/mamba_ssm-X.Y.Z/setup.py

Exits 1 (and changes nothing) when it finds no hard-coded pair: a newer setup.py then needs a look,
rather than a silent hours-long build.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

# cc_flag.append("-gencode")
# cc_flag.append("arch=compute_90,code=sm_90")
PAIR = re.compile(
    r'cc_flag\.append\(\s*"-gencode"\s*\)(?P<gap>\s*\n\s*)'
    r'cc_flag\.append\(\s*"arch=compute_(?P<arch>\d+a?),code=sm_\d+a?"\s*\)'
)


def restrict(text: str) -> tuple[str, list[str]]:
    """Replace every hard-coded pair by `pass` (keeps the enclosing `if` blocks valid)."""
    removed: list[str] = []

    def drop(match: re.Match[str]) -> str:
        removed.append(match.group("arch"))
        return "pass" + match.group("gap") + "pass"

    return PAIR.sub(drop, text), removed


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[1])
    patched, removed = restrict(path.read_text())
    if not removed:
        print(f"{path}: no hard-coded -gencode pairs found; not changed", file=sys.stderr)
        return 1
    compile(patched, str(path), "exec")  # never write a setup.py that does not parse
    path.write_text(patched)
    print(f"{path}: removed hard-coded sm_{', sm_'.join(removed)}; TORCH_CUDA_ARCH_LIST decides")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
