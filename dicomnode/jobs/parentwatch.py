"""A worker started by ``dicomnode serve`` ends when that process ends, however it ends.

A supervisor killed with SIGKILL (or OOM-killed) cannot stop its children; an orphaned worker
would keep claiming jobs next to the supervisor's replacement. Two guards, both given the
supervisor's pid (``dicomnode worker --parent-pid PID``):

* Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker with its parent.
* Everywhere: a thread that checks every second that the parent is still the same process
  (``os.getppid()``); when not, the worker exits at once.

Either way a job the worker held is freed by the next worker of the host (the lease owner's
pid is gone, ``dicomnode.db.leases``) or when its lease expires, and runs again with the same
result UIDs.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
CHECK_INTERVAL_S = 1.0
ORPHAN_EXIT_CODE = 75


def _set_parent_death_signal() -> bool:
    """Ask the Linux kernel for SIGKILL when the parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _orphaned(parent_pid: int) -> bool:
    return os.getppid() != parent_pid


def _exit_orphan(parent_pid: int) -> None:
    log.error("parent process %d is gone; worker %d exits", parent_pid, os.getpid())
    logging.shutdown()
    os._exit(ORPHAN_EXIT_CODE)


def _watch(parent_pid: int, interval_s: float) -> None:
    stop = threading.Event()
    while not stop.wait(interval_s):
        if _orphaned(parent_pid):
            _exit_orphan(parent_pid)


def exit_with_parent(parent_pid: int, interval_s: float = CHECK_INTERVAL_S) -> None:
    """Make this process end when ``parent_pid`` (its parent) ends; returns at once."""
    kernel = _set_parent_death_signal()
    if _orphaned(parent_pid):  # the parent died before the kernel was asked
        _exit_orphan(parent_pid)
    threading.Thread(
        target=_watch, args=(parent_pid, interval_s), name="parent-watch", daemon=True
    ).start()
    log.debug("worker follows parent %d (kernel death signal: %s)", parent_pid, kernel)
