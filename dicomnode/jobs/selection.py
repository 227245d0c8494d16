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

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ORIENTATION_TOLERANCE = 1e-3  # direction cosines
AXIAL_MIN_NORMAL_Z = 0.9  # |cos| between slice normal and the patient z axis
DUPLICATE_POSITION_MM = 0.01
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


def _floats(text: str | None, count: int) -> tuple[float, ...] | None:
    if not text:
        return None
    try:
        values = tuple(float(v) for v in text.split("\\"))
    except ValueError:
        return None
    return values if len(values) == count else None


def _missing_numbers(numbers: Sequence[int | None]) -> tuple[int, ...]:
    known = sorted({n for n in numbers if n is not None})
    if len(known) < 2:
        return ()
    present = set(known)
    return tuple(n for n in range(known[0], known[-1] + 1) if n not in present)


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
    parsed = [_floats(i.image_orientation, 6) for i in insts]
    orientations = [o for o in parsed if o is not None]
    if len(orientations) != len(parsed):
        return no("missing or malformed ImageOrientationPatient")
    first = orientations[0]
    for other in orientations:
        if max(abs(a - b) for a, b in zip(first, other, strict=True)) > ORIENTATION_TOLERANCE:
            return no("slices have different orientations")
    row, col = first[:3], first[3:]
    normal = (
        row[1] * col[2] - row[2] * col[1],
        row[2] * col[0] - row[0] * col[2],
        row[0] * col[1] - row[1] * col[0],
    )
    if abs(normal[2]) < AXIAL_MIN_NORMAL_Z:
        return no("not axial (slice normal %.2f, %.2f, %.2f)" % normal)
    if len({(i.rows, i.columns) for i in insts}) != 1:
        return no("slices have different matrix sizes")
    if len({i.pixel_spacing for i in insts}) != 1 or _floats(insts[0].pixel_spacing, 2) is None:
        return no("missing or inconsistent PixelSpacing")
    positions = []
    for inst in insts:
        pos = _floats(inst.image_position, 3)
        if pos is None:
            return no("missing or malformed ImagePositionPatient")
        positions.append(sum(p * n for p, n in zip(pos, normal, strict=True)))
    positions.sort()
    gaps = [b - a for a, b in zip(positions, positions[1:], strict=False)]
    if any(g < DUPLICATE_POSITION_MM for g in gaps):
        return no("duplicate slice positions (several phases or reconstructions in one series)")
    median_gap = sorted(gaps)[len(gaps) // 2]
    if any(abs(g - median_gap) > rules.spacing_tolerance * median_gap for g in gaps):
        return no("inconsistent slice spacing (gaps %.2f-%.2f mm)" % (min(gaps), max(gaps)))
    thickness = insts[0].slice_thickness or median_gap
    if max(thickness, median_gap) > rules.max_slice_thickness_mm:
        return no(
            "slices too thick (%.1f mm > %.1f mm)"
            % (max(thickness, median_gap), rules.max_slice_thickness_mm)
        )
    coverage = positions[-1] - positions[0] + median_gap
    return SeriesAssessment(
        uid,
        True,
        f"{len(insts)} axial slices, {median_gap:.2f} mm spacing, {coverage:.0f} mm coverage",
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
