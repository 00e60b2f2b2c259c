"""Incremental protocols ("10-0", "9-1", "6-4", "6-1x4", ...) and the object order they apply to.

"A-BxN" means: a base step with the first A objects, then N steps of B new objects each. "A-B" is
"A-Bx1", and "A-0" is one step with everything (the "joint" upper bound of incremental learning).
A protocol must use every selected object exactly once, so A + B*N must equal their number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from model.errors import InputError

# The MVTec 3D-AD object order of the paper; steps take objects in this order.
PAPER_ORDER = ("bagel", "cable_gland", "carrot", "cookie", "dowel", "foam", "peach", "potato", "rope", "tire")

PROTOCOL_PATTERN = re.compile(r"(\d+)-(\d+)(?:x(\d+))?")


def parse_protocol(name: str) -> tuple[int, int, int]:
    """ "A-BxN" -> (A, B, N); "A-B" -> (A, B, 1 if B else 0)."""
    match = PROTOCOL_PATTERN.fullmatch(name.strip())
    if match is None:
        raise InputError(f"unknown protocol {name!r}; expected A-B or A-BxN, e.g. 10-0, 9-1, 6-4, 6-1x4")
    base, size, repeats = int(match.group(1)), int(match.group(2)), match.group(3)
    steps = int(repeats) if repeats is not None else (1 if size else 0)
    if base < 1:
        raise InputError(f"protocol {name!r}: the base step needs at least one object")
    if steps and size == 0:
        raise InputError(f"protocol {name!r}: incremental steps need at least one object each")
    return base, size, steps


def protocol_steps(name: str, objects: Sequence[str]) -> list[list[str]]:
    """The objects learned at each step, in the given object order."""
    base, size, steps = parse_protocol(name)
    needed = base + size * steps
    if needed != len(objects):
        raise InputError(
            f"protocol {name} uses {needed} objects but {len(objects)} were selected "
            f"({', '.join(objects)}); choose a protocol whose numbers add up to {len(objects)}, "
            f"e.g. {len(objects)}-0, or select objects with --objects"
        )
    plan = [list(objects[:base])]
    for step in range(steps):
        start = base + step * size
        plan.append(list(objects[start : start + size]))
    return plan


def order_objects(available: Sequence[str], requested: Sequence[str] | None = None) -> list[str]:
    """`requested` as given (each must exist, no repeats); by default the paper's order for the
    MVTec 3D-AD names that exist, then every other object alphabetically."""
    if requested is not None:
        requested = [name.strip() for name in requested if name.strip()]
        unknown = [name for name in requested if name not in available]
        if unknown:
            raise InputError(
                f"unknown object(s) {', '.join(unknown)}; available: {', '.join(sorted(available))}"
            )
        repeated = sorted({name for name in requested if requested.count(name) > 1})
        if repeated:
            raise InputError(f"object(s) listed more than once: {', '.join(repeated)}")
        if not requested:
            raise InputError("no objects selected")
        return list(requested)
    if not available:
        raise InputError("the dataset has no objects")
    in_paper = [name for name in PAPER_ORDER if name in available]
    return in_paper + sorted(name for name in available if name not in PAPER_ORDER)
