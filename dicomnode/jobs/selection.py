"""Choose the series of a study to analyse, from stored header values only (no pixels).

A study may hold scouts, several reconstructions, dose reports, reformats, phases. The best
axial chest CT series is the one with consistent geometry, enough slices and the widest
coverage, then the thinnest slices. Every series that is not chosen gets a reason in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

from dicomnode.config import SelectionSettings
from dicomnode.contracts.stack import (
    SliceGeometry,
    StackError,
    check_stack,
    parse_numbers,
    slice_normal,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
AXIAL_MIN_NORMAL_Z = 0.9  # |cos| between slice normal and the patient z axis
COVERAGE_SHARE_FOR_TIE = 0.8  # series covering >= 80% of the widest one count as full coverage


@dataclass(frozen=True)
class InstanceGeometry:
    sop_class_uid: str
    instance_number: int | None
    image_type: str
    rows: int | None
    columns: int | None
    image_position: str | None
    image_orientation: str | None
    pixel_spacing: str | None
    slice_thickness: float | None

    @classmethod
    def of(cls, source: object) -> InstanceGeometry:
        """The geometry fields of anything that has them by name (a row, an InstanceRecord)."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class SeriesCandidate:
    series_instance_uid: str
    modality: str
    description: str
    instances: tuple[InstanceGeometry, ...]


@dataclass(frozen=True)
class SeriesAssessment:
    series_instance_uid: str
    eligible: bool
    reason: str  # why not eligible, or a short description of the series when eligible
    slice_spacing_mm: float = math.inf
    coverage_mm: float = 0.0
    missing_instance_numbers: tuple[int, ...] = ()


@dataclass(frozen=True)
class Selection:
    chosen: SeriesAssessment | None
    skipped: tuple[SeriesAssessment, ...]  # every other series, with its reason


def _missing_numbers(numbers: Sequence[int | None]) -> tuple[int, ...]:
    known = sorted({n for n in numbers if n is not None})
    if len(known) < 2:
        return ()
    present = set(known)
    return tuple(n for n in range(known[0], known[-1] + 1) if n not in present)


def _slice_geometry(insts: Sequence[InstanceGeometry]) -> list[SliceGeometry] | str:
    """The parsed geometry of each instance, or the reason it cannot be parsed."""
    slices = []
    for inst in insts:
        orientation = parse_numbers(inst.image_orientation, 6)
        if orientation is None:
            return "missing or malformed ImageOrientationPatient"
        position = parse_numbers(inst.image_position, 3)
        if position is None:
            return "missing or malformed ImagePositionPatient"
        spacing = parse_numbers(inst.pixel_spacing, 2)
        if spacing is None:
            return "missing or malformed PixelSpacing"
        slices.append(SliceGeometry(
            position=(position[0], position[1], position[2]),
            orientation=(orientation[0], orientation[1], orientation[2],
                         orientation[3], orientation[4], orientation[5]),
            rows=inst.rows or 0, columns=inst.columns or 0,
            pixel_spacing=(spacing[0], spacing[1]), instance_number=inst.instance_number,
        ))
    return slices


def assess(candidate: SeriesCandidate, rules: SelectionSettings) -> SeriesAssessment:
    """Decide whether one series is an analysable axial chest CT, and say why not."""
    uid = candidate.series_instance_uid

    def no(reason: str) -> SeriesAssessment:
        return SeriesAssessment(uid, False, reason)

    if candidate.modality.upper() != "CT":
        return no(f"not a CT series (modality {candidate.modality or 'missing'})")
    insts = candidate.instances
    classes = {i.sop_class_uid for i in insts}
    if classes - {CT_IMAGE_STORAGE}:
        if classes & {ENHANCED_CT_IMAGE_STORAGE}:
            return no("enhanced multi-frame CT is not supported yet")
        return no("not CT image storage (holds " + ", ".join(sorted(classes)) + ")")
    if any("LOCALIZER" in i.image_type.upper() for i in insts):
        return no("localizer/scout images (ImageType LOCALIZER)")
    words = candidate.description.lower()
    for word in rules.exclude_description_words:
        if word.lower() in words:
            return no(f"series description {candidate.description!r} names a {word}")
    if len(insts) < rules.min_slices:
        return no(f"too few slices ({len(insts)} < {rules.min_slices})")
    slices = _slice_geometry(insts)
    if isinstance(slices, str):
        return no(slices)
    try:
        normal = slice_normal(slices[0].orientation)
        if abs(normal[2]) < AXIAL_MIN_NORMAL_Z:
            return no("not axial (slice normal %.2f, %.2f, %.2f)" % normal)
        stack = check_stack(
            slices, min_slices=rules.min_slices, spacing_tolerance=rules.spacing_tolerance
        )
    except StackError as exc:
        return no(str(exc))
    median_gap = stack.median_gap_mm
    thickness = insts[0].slice_thickness or median_gap
    if max(thickness, median_gap) > rules.max_slice_thickness_mm:
        return no(
            "slices too thick (%.1f mm > %.1f mm)"
            % (max(thickness, median_gap), rules.max_slice_thickness_mm)
        )
    coverage = stack.coverage_mm
    return SeriesAssessment(
        uid,
        True,
        f"{len(stack.order)} axial slices, {median_gap:.2f} mm spacing, {coverage:.0f} mm coverage",
        slice_spacing_mm=median_gap,
        coverage_mm=coverage,
        missing_instance_numbers=_missing_numbers([i.instance_number for i in insts]),
    )


def choose_series(candidates: Sequence[SeriesCandidate], rules: SelectionSettings) -> Selection:
    """Assess every series; choose full coverage first, then thin slices, then slice count."""
    assessed = [assess(c, rules) for c in candidates]
    eligible = [a for a in assessed if a.eligible]
    if not eligible:
        return Selection(None, tuple(assessed))
    widest = max(a.coverage_mm for a in eligible)
    counts = {c.series_instance_uid: len(c.instances) for c in candidates}

    def rank(a: SeriesAssessment) -> tuple[bool, float, int]:
        full = a.coverage_mm >= COVERAGE_SHARE_FOR_TIE * widest
        return (not full, round(a.slice_spacing_mm, 2), -counts[a.series_instance_uid])

    chosen = min(eligible, key=rank)
    skipped = []
    for a in assessed:
        if a is chosen:
            continue
        if a.eligible:
            a = SeriesAssessment(
                a.series_instance_uid,
                False,
                f"another series preferred ({chosen.reason}; this one: {a.reason})",
                a.slice_spacing_mm,
                a.coverage_mm,
            )
        skipped.append(a)
    return Selection(chosen, tuple(skipped))
