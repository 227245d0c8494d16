"""Free TCP ports on the loopback interface for peers started by the tests.

A port is found by binding to port 0 and closing the socket again; the small race with other
processes is accepted, and ports already handed out by this process are never handed out twice.
"""

from __future__ import annotations

import socket
import threading
import time

LOOPBACK_HOST = "127.0.0.1"
_MAX_TRIES = 200

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = LOOPBACK_HOST) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now."""
    with _lock:
        for _ in range(_MAX_TRIES):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free TCP port found on {host} after {_MAX_TRIES} tries")


def free_ports(count: int, host: str = LOOPBACK_HOST) -> list[int]:
    """Return ``count`` distinct free ports on ``host``."""
    if count < 1:
        raise ValueError("count must be >= 1")
    return [free_port(host) for _ in range(count)]


def port_accepts(port: int, host: str = LOOPBACK_HOST, timeout_s: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(port: int, timeout_s: float, host: str = LOOPBACK_HOST) -> bool:
    """Poll until ``host:port`` accepts a connection or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_accepts(port, host):
            return True
        time.sleep(0.05)
    return port_accepts(port, host)
