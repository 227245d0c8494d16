"""Receiving on several processes: ``[node] receiver_processes``.

One Python process stores instances on about one core (the GIL). With ``receiver_processes``
N > 1 the node process and N - 1 receiver processes (``dicomnode receive``) all listen on the
DICOM port with ``SO_REUSEPORT``; the kernel spreads new connections across them. Each process
runs the whole receiver (admission, checks, spool, its own row writer) against the same data
directory and database; the durability rules do not change.

What is per process: ``max_associations``, ``max_associations_per_peer`` and
``max_pending_connections`` hold in each process, so one address may hold up to N times its
per-peer limit. Storage Commitment reports (N-EVENT-REPORT) may reach any process; a receiver
process reads the report and relays it over a Unix datagram socket to the node process, whose
exporter tracks the open requests (``CommitmentRelay``). Linux only lets processes of the same
user share a port this way.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomnode.delivering.commitment import parse_report

log = logging.getLogger(__name__)

RELAY_SOCKET_NAME = "commitment-relay.sock"
RELAY_MAX_BYTES = 4 * 1024 * 1024  # a report naming some thousands of instances


class CommitmentRelay:
    """The node process's end: applies the reports that receiver processes relay to it."""

    def __init__(self, path: Path, apply: Callable[[str, list[str], list[str]], None]) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.5)
        self._apply = apply
        self._ready: set[int] = set()
        self._ready_changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="commitment-relay", daemon=True)
        self._stop = threading.Event()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(RELAY_MAX_BYTES)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                report = json.loads(data)
                if "ready" in report:  # a receiver process is listening
                    with self._ready_changed:
                        self._ready.add(int(report["ready"]))
                        self._ready_changed.notify_all()
                    continue
                self._apply(str(report["transaction"]), [str(u) for u in report["committed"]],
                            [str(u) for u in report["failed"]])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable relayed storage commitment report: %s", exc)

    def wait_ready(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` receiver processes said they listen; False on timeout."""
        with self._ready_changed:
            return self._ready_changed.wait_for(lambda: len(self._ready) >= count, timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        self._thread.join(timeout=2.0)
        self.path.unlink(missing_ok=True)


def relay_handler(path: Path) -> Callable[[Any], tuple[int, None]]:
    """A receiver process's EVT_N_EVENT_REPORT handler: read the report, relay it, answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

    def handle(event: Any) -> tuple[int, None]:
        parsed = parse_report(event)
        if parsed is None:
            return 0x0110, None
        transaction, committed, failed = parsed
        payload = json.dumps({"transaction": transaction, "committed": committed,
                              "failed": failed}).encode()
        try:
            sock.sendto(payload, str(path))
        except OSError as exc:  # the node process is gone or busy: the PACS may send it again
            log.error("storage commitment report %s not relayed: %s", transaction, exc)
            return 0x0110, None
        return 0x0000, None

    return handle


def announce_ready(path: Path) -> None:
    """Tell the node process that this receiver process listens on the port."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(json.dumps({"ready": os.getpid()}).encode(), str(path))
        except OSError as exc:
            log.warning("could not tell the node process this receiver is ready: %s", exc)


def relay_path(data_dir: Path) -> Path:
    return Path(data_dir) / "tmp" / RELAY_SOCKET_NAME
