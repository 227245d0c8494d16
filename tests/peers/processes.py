"""Finding the real DICOM peers' executables and running them as child processes.

Every peer gets ``TCP_NODELAY=1`` in its environment: dcmtk (and Orthanc, which is built on it)
otherwise waits for delayed ACKs on each C-STORE and a 300-slice series takes seconds longer.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

INSTALL_SCRIPT = ".ci/install-system.sh"
STOP_GRACE_S = 10.0
KILL_WAIT_S = 5.0
LOG_TAIL_LINES = 40

# The Debian package that provides each executable the harness runs.
DEBIAN_PACKAGE_OF_TOOL: dict[str, str] = {
    "Orthanc": "orthanc",
    "storescu": "dcmtk",
    "storescp": "dcmtk",
    "echoscu": "dcmtk",
    "dcmdump": "dcmtk",
    "dsrdump": "dcmtk",
    "dcmconv": "dcmtk",
    "dcmcjpls": "dcmtk",
    "dcmdjpls": "dcmtk",
    "dcmcjpeg": "dcmtk",
    "dcmdjpeg": "dcmtk",
    "dcmcrle": "dcmtk",
    "dcmdrle": "dcmtk",
    "dciodvfy": "dicom3tools",
    "dcentvfy": "dicom3tools",
}

# Orthanc lives in /usr/sbin on Debian, which is not on every user's PATH.
_EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class MissingPeerError(RuntimeError):
    """A real peer (Orthanc, dcmtk, dicom3tools) is not installed on this machine."""


def install_hint(tool: str) -> str:
    """A one-line instruction that installs the package providing ``tool``."""
    package = DEBIAN_PACKAGE_OF_TOOL.get(tool, "dcmtk dicom3tools orthanc")
    return (
        f"'{tool}' is not installed: run `sudo {INSTALL_SCRIPT}` "
        f"(or `sudo apt-get install {package}`)"
    )


def find_tool(name: str) -> Path:
    """Absolute path of executable ``name``; raise :class:`MissingPeerError` if absent."""
    found = shutil.which(name)
    if found is None:
        for directory in _EXTRA_DIRS:
            candidate = Path(directory) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                found = str(candidate)
                break
    if found is None:
        raise MissingPeerError(install_hint(name))
    return Path(found)


def peer_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a peer process: ours plus ``TCP_NODELAY=1``."""
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    if extra:
        env.update(extra)
    return env


def stop_process(
    proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S, sig: int = signal.SIGTERM
) -> int | None:
    """Stop ``proc`` with ``sig`` (SIGTERM), kill it if it outlives ``grace_s``; return its
    exit code."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            return None


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, for failure messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(log {path} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:])
