"""`iumad version`."""

from __future__ import annotations

import argparse

from iumad import __version__


def run(args: argparse.Namespace) -> int:
    print(f"iumad {__version__}")
    return 0
