"""dicom3tools conformance checks: ``dciodvfy`` per file, ``dcentvfy`` across files.

Both write their findings to stderr and their exit codes do not reflect errors reliably, so the
gate is the list of lines starting with ``Error``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

from tests.peers.processes import find_tool

VERIFY_TIMEOUT_S = 120.0
ERROR_PREFIX = "Error"


def _output_lines(args: list[str]) -> list[str]:
    result = subprocess.run(
        args, capture_output=True, text=True, errors="replace", timeout=VERIFY_TIMEOUT_S,
        check=False,
    )
    return (result.stderr + "\n" + result.stdout).splitlines()


def dciodvfy_report(path: Path) -> list[str]:
    """Every line ``dciodvfy`` prints for one file (errors, warnings, IOD name)."""
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    return [line for line in _output_lines([str(find_tool("dciodvfy")), str(path)]) if line]


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of ``dciodvfy`` for one file (empty: conformant to its IOD)."""
    return [line for line in dciodvfy_report(path) if line.startswith(ERROR_PREFIX)]


def dcentvfy_errors(paths: Iterable[Path]) -> list[str]:
    """The ``Error`` lines of ``dcentvfy``: inconsistent patient/study/series/frame-of-reference
    attributes across the files (for example two patients' names under one Patient ID)."""
    files = [str(p) for p in paths]
    if not files:
        raise ValueError("dcentvfy needs at least one file")
    for name in files:
        if not Path(name).is_file():
            raise FileNotFoundError(name)
    lines = _output_lines([str(find_tool("dcentvfy")), *files])
    return [line for line in lines if line.startswith(ERROR_PREFIX)]
