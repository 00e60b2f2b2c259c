"""No process outlives its parent: the Linux parent-death signal, for every child we start.

A gateway killed with SIGKILL (the OOM killer, `kill -9`) runs no cleanup, so its children must go by
themselves: the embedded Redis, the embedded worker (it also watches its parent's pid), rq's work
horses and the enrolment ingest processes. The kernel delivers the signal when the *thread* that
started the child exits; every starter here lives as long as its process (the main thread, the
embedded supervisor, the event loop).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal

PR_SET_PDEATHSIG = 1  # prctl(2)


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies; exit at once if it already has.
    A no-op where prctl is not available (not Linux)."""
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def dying_with_parent(command: list[str]) -> list[str]:
    """`command` run under util-linux `setpriv --pdeathsig KILL` where it exists: the parent-death
    signal for a program we cannot change (redis-server), without a `preexec_fn` in a threaded
    process."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *command] if setpriv else command
