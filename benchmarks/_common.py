"""Shared pieces of the benchmarks: repeated timing, summary statistics and plain-text tables.

Benchmarks print tables; they do not assert speeds. Run them from the repository root as
modules (``python -m benchmarks.ingest``) so ``tests.peers`` and the packages import.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


@dataclass
class Measurement:
    """Repeated timings of one benchmark target; ``error`` set when it could not run."""

    name: str
    items: int
    seconds: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.seconds)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rates_per_s(self) -> list[float]:
        return [self.items / s for s in self.seconds if s > 0]

    @property
    def median_rate_per_s(self) -> float:
        return statistics.median(self.rates_per_s)


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action`` takes on the monotonic clock."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A fixed-width text table; the first column left-aligned, the others right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def rate_table(measurements: Sequence[Measurement], unit: str = "instances") -> str:
    """Median/min/max rate per target, or the reason a target did not run."""
    rows = []
    for m in measurements:
        if m.ok:
            rates = m.rates_per_s
            rows.append([
                m.name, str(len(m.seconds)), f"{m.median_s:.3f}", f"{m.median_rate_per_s:.0f}",
                f"{min(rates):.0f}", f"{max(rates):.0f}",
            ])
        else:
            rows.append([m.name, "0", "-", "-", "-", "-"])
    headers = ["target", "runs", "median s", f"median {unit}/s", "min/s", "max/s"]
    return format_table(headers, rows)


def ratio_line(numerator: Measurement, denominator: Measurement) -> str:
    """``a/b = 0.83`` for the median rates, or why it cannot be computed."""
    label = f"{numerator.name}/{denominator.name}"
    if not (numerator.ok and denominator.ok):
        return f"{label}: n/a"
    return f"{label}: {numerator.median_rate_per_s / denominator.median_rate_per_s:.2f}"


def machine_line() -> str:
    """One line describing where the numbers were taken."""
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )
