"""Durable, all-or-nothing directory writes: a reader sees the whole directory or none of it.

A writer fills a staging directory beside the target, then `publish_directory` fsyncs every file and
folder in it, renames it into place in one step and fsyncs the parent, so the rename survives a power
cut. Model versions and stored enrolment samples are written this way.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush one file or directory to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_directory(staging: Path, final: Path) -> None:
    """fsync everything under `staging`, rename it to `final` (same file system), fsync the parent."""
    for directory, _folders, names in os.walk(staging):
        for name in names:
            fsync_path(Path(directory) / name)
        fsync_path(Path(directory))
    os.rename(staging, final)
    fsync_path(final.parent)
