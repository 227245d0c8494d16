"""The geometry a series must have to be analysed: one regular stack of parallel slices.

One implementation for both sides: the node's series selection checks it on stored header
values before it queues a job, and the pipeline's reader checks it on the files it decodes, so
the node never chooses a series the pipeline then refuses.

The rules, checked in this order:

- every slice has the same orientation (direction cosines within 1e-3);
- every slice has the same matrix and pixel spacing (within 1e-3 mm);
- slices closer than 0.01 mm along the normal share a position. A few such repeats (a slice
  sent twice under a new UID) are dropped, keeping the lowest instance number; when more than
  one position in ten repeats, the series holds several phases or reconstructions and is
  refused, since no rule can tell which image of a position to keep;
- enough distinct positions (``min_slices``);
- regular gaps: each within ``spacing_tolerance`` (relative) of the median gap; a gap of about
  k times the median is reported as k - 1 missing slices;
- no in-plane drift of the positions beyond half a pixel (gantry tilt, sheared reformats).

Pure Python on purpose (no numpy): the node imports it in processes that never load arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
PIXEL_SPACING_TOLERANCE_MM = 1e-3
DUPLICATE_POSITION_MM = 0.01  # closer than this along the normal: the same position
MAX_REPEATED_SHARE = 0.1  # more repeated positions than this share: several phases
IN_PLANE_SHIFT_TOLERANCE_PIXELS = 0.5

Vector = tuple[float, float, float]


class StackError(ValueError):
    """The slices do not form one regular stack; the message says why, in words."""


@dataclass(frozen=True)
class SliceGeometry:
    """The header values of one slice that the rules read."""

    position: Vector  # ImagePositionPatient (mm, LPS)
    orientation: tuple[float, float, float, float, float, float]  # ImageOrientationPatient
    rows: int
    columns: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm
    instance_number: int | None = None


@dataclass(frozen=True)
class Stack:
    """A checked stack: which slices to use, in order along the normal."""

    order: tuple[int, ...]  # indices of the kept slices, sorted along the normal
    dropped: tuple[int, ...]  # indices of repeated positions left out
    positions_mm: tuple[float, ...]  # of the kept slices along the normal
    normal: Vector  # unit slice normal (row direction x column direction)
    median_gap_mm: float

    @property
    def slice_spacing_mm(self) -> float:
        """Mean distance between neighbouring slices."""
        p = self.positions_mm
        return (p[-1] - p[0]) / (len(p) - 1)

    @property
    def coverage_mm(self) -> float:
        return self.positions_mm[-1] - self.positions_mm[0] + self.median_gap_mm


def parse_numbers(text: str | None, count: int) -> tuple[float, ...] | None:
    """``count`` numbers of a backslash-separated DICOM DS value, or None when it is not that."""
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        return None
    return values


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def slice_normal(orientation: Sequence[float]) -> Vector:
    """Unit normal of a slice with ImageOrientationPatient ``orientation``."""
    row, col = orientation[:3], orientation[3:]
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    length = math.sqrt(_dot(normal, normal))
    if length < 0.5:
        raise StackError(f"ImageOrientationPatient {list(orientation)} is not two unit axes")
    return (normal[0] / length, normal[1] / length, normal[2] / length)


def _check_same_plane(slices: Sequence[SliceGeometry]) -> None:
    first = slices[0]
    for s in slices[1:]:
        diff = max(abs(a - b) for a, b in zip(s.orientation, first.orientation, strict=True))
        if diff > ORIENTATION_TOLERANCE:
            raise StackError(
                f"inconsistent ImageOrientationPatient: {list(s.orientation)} (instance "
                f"{s.instance_number}) differs from {list(first.orientation)}"
            )
        if (s.rows, s.columns) != (first.rows, first.columns):
            raise StackError(
                f"inconsistent matrix: instance {s.instance_number} is {s.rows}x{s.columns}, "
                f"first slice {first.rows}x{first.columns}"
            )
        diff = max(abs(a - b) for a, b in zip(s.pixel_spacing, first.pixel_spacing, strict=True))
        if diff > PIXEL_SPACING_TOLERANCE_MM:
            raise StackError(
                f"inconsistent PixelSpacing: instance {s.instance_number} has "
                f"{list(s.pixel_spacing)}, first slice {list(first.pixel_spacing)}"
            )
    if min(first.pixel_spacing) <= 0:
        raise StackError(f"PixelSpacing {list(first.pixel_spacing)} is not positive")


def _sorted_distinct(
    slices: Sequence[SliceGeometry], normal: Vector
) -> tuple[list[int], list[int], list[float]]:
    along = [_dot(s.position, normal) for s in slices]
    numbers = [s.instance_number if s.instance_number is not None else 0 for s in slices]
    order = sorted(range(len(slices)), key=lambda i: (along[i], numbers[i]))
    kept: list[int] = []
    dropped: list[int] = []
    for i in order:
        if kept and abs(along[i] - along[kept[-1]]) < DUPLICATE_POSITION_MM:
            dropped.append(i)
        else:
            kept.append(i)
    if len(dropped) > MAX_REPEATED_SHARE * len(kept):
        raise StackError(
            f"duplicate slice positions ({len(dropped)} repeats of {len(kept)} positions: "
            "several phases or reconstructions in one series)"
        )
    return kept, dropped, [along[i] for i in kept]


def _check_gaps(positions: Sequence[float], tolerance: float) -> float:
    gaps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    median = sorted(gaps)[len(gaps) // 2]
    for i, gap in enumerate(gaps):
        if abs(gap - median) <= tolerance * median:
            continue
        ratio = gap / median
        if ratio > 1.5 and abs(ratio - round(ratio)) <= tolerance * round(ratio):
            raise StackError(
                f"{round(ratio) - 1} slice(s) missing between positions {positions[i]:.2f} mm "
                f"and {positions[i + 1]:.2f} mm (slice spacing {median:.2f} mm)"
            )
        raise StackError(
            f"irregular slice spacing: gap of {gap:.2f} mm between positions "
            f"{positions[i]:.2f} mm and {positions[i + 1]:.2f} mm, median gap {median:.2f} mm"
        )
    return median


def _check_in_plane(slices: Sequence[SliceGeometry], kept: Sequence[int]) -> None:
    first = slices[kept[0]]
    row, col = first.orientation[:3], first.orientation[3:]
    worst = 0.0
    for i in kept:
        offset = [a - b for a, b in zip(slices[i].position, first.position, strict=True)]
        worst = max(
            worst,
            abs(_dot(offset, row)) / first.pixel_spacing[1],
            abs(_dot(offset, col)) / first.pixel_spacing[0],
        )
    if worst > IN_PLANE_SHIFT_TOLERANCE_PIXELS:
        raise StackError(
            f"slice positions drift {worst:.1f} pixels in-plane (gantry tilt or sheared stack); "
            "only orthogonal stacks are supported"
        )


def check_stack(
    slices: Sequence[SliceGeometry], *, min_slices: int, spacing_tolerance: float
) -> Stack:
    """Check the rules of the module docstring; raise ``StackError`` with the first broken."""
    if min_slices < 2:
        raise ValueError("min_slices must be at least 2")
    if not 0.0 < spacing_tolerance < 1.0:
        raise ValueError("spacing_tolerance must be between 0 and 1")
    if not slices:
        raise StackError("no slices")
    _check_same_plane(slices)
    normal = slice_normal(slices[0].orientation)
    kept, dropped, positions = _sorted_distinct(slices, normal)
    if len(kept) < min_slices:
        raise StackError(f"series has {len(kept)} distinct slices, at least {min_slices} needed")
    median = _check_gaps(positions, spacing_tolerance)
    _check_in_plane(slices, kept)
    return Stack(tuple(kept), tuple(dropped), tuple(positions), normal, median)
