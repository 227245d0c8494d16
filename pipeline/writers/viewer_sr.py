"""Companion TID 1500 report "for viewers": each lesion as an outline on one CT slice.

Why a second report: the main report (``pipeline.writers.sr``) describes every lung and lesion
as a TID 1411 volumetric group referencing its SEG segment, without image coordinates, and
the classification as study-level qualitative evaluations. That is what reporting systems
and the standard want, but OHIF 3.13's SR viewport fails on any measurement group without
image coordinates (upstream issue #3390; one such group is enough), so the main report cannot
be opened there. This document holds only groups that a viewer can draw, and is kept beside
the main report, which stays complete and unchanged.

Content (Comprehensive 3D SR, TID 1500, same observer, procedure and language as the main
report), one TID 1501 measurement group per lesion:

- Tracking Identifier ``Cornerstone3DTools@^0.1.0:PlanarFreehandROI`` (the Cornerstone tool
  OHIF maps the group to, the convention dcmjs writes) and Tracking Unique Identifier equal to
  the lesion's SEG segment Tracking UID, so both reports and the SEG name the same lesion;
- finding category "Morphologically abnormal structure", finding "Lesion", finding site lung
  with laterality, the localizer's algorithm identification (TID 4019: name, version, family
  and, for a trained model, ``sha256=<weights checksum>`` as its algorithm parameter);
- NUM "Area" (mm2) of the lesion on its largest axial slice, INFERRED FROM an SCOORD: the
  lesion's outline on that slice as a closed POLYLINE (first point repeated) in image pixel
  coordinates, SELECTED FROM that CT image. OHIF reads the first NUM's SCOORD to draw and to
  load the measurement;
- NUM "Attenuation Coefficient" (mean, HU) inside the outline, with the same SCOORD;
- NUM "Volume" (mL) of the whole lesion, with no SCOORD: it is measured on the 3D mask, not on
  the outline (OHIF 3.13 reads a NUM without content as a label only);
- when a classifier ran, the predicted class as a qualitative evaluation (CODE item: the
  class's finding, "Present"), which adds no group and no coordinate-less measurement;
- a TEXT "Comment" (DCM 121106) naming the lesion as the SEG and the summary do, e.g.
  "Lesion 2 (right lung, 12.4 mL)". OHIF titles a measurement with this comment (the
  convention its own SR writer uses); without it every row of the panel reads "Lesion".

These are planar groups in TID 1501 form, not TID 1410 ones: in a TID 1410 group the SCOORD
belongs to the group and its NUMs carry none, and OHIF then draws the outline but cannot load
it as a measurement (its loader takes the SCOORD from the first NUM); highdicom likewise
rejects NUM coordinates inside TID 1410. Checked headless with OHIF 3.13.2 on a real CT: the
measurement panel lists one "Lesion" per group and each outline is drawn on its slice.

Without lesions nothing is written (``None``): there is nothing for a viewer to draw, and the
main report then simply has no lesion group.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicomnode.contracts import PriorReport
from pipeline.types import Lesion, StudyResult
from pipeline.writers import codes
from pipeline.writers.contours import outline
from pipeline.writers.seg import (
    SegmentPlan,
    lesion_model,
)
from pipeline.writers.sr import (
    algorithm_identification,
    comprehensive_3d_sr,
    measurement_report,
)
from pipeline.writers.uids import derive_uid

logger = logging.getLogger(__name__)

VIEWER_SR_SERIES_NUMBER = 9004
VIEWER_SR_INSTANCE_NUMBER = 1
VIEWER_SR_SERIES_DESCRIPTION = "AI findings for viewers (outlines)"
# Tracking identifier naming the Cornerstone3D tool a viewer maps a freehand outline to.
CORNERSTONE_FREEHAND_TRACKING_ID = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI"
AREA_DIGITS = 3  # decimals of areas in mm2
HU_DIGITS = 2  # decimals of mean attenuation in HU
VOLUME_DIGITS = 3  # decimals of volumes in mL


@dataclass(frozen=True)
class LesionOutline:
    """A lesion drawn on its largest axial slice: the polygon and what was measured inside."""

    lesion_number: int
    slice_index: int  # z index into ``CTVolume.datasets``
    source: Dataset  # header of the CT image the outline lies on
    points: npt.NDArray[np.float64]  # (N, 2) closed (column, row) image coordinates
    area_mm2: float  # lesion voxels on that slice times the pixel area
    mean_hu: float  # mean attenuation of those voxels


def viewer_sr_uids(uid_root: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the viewer report of the job with ``uid_root``."""
    return (
        derive_uid(uid_root, "viewer-sr", "series"),
        derive_uid(uid_root, "viewer-sr", "instance"),
    )


def lesion_outline(result: StudyResult, lesion: Lesion) -> LesionOutline:
    """Outline and in-slice measurements of ``lesion`` on its largest axial slice.

    Uses ``Lesion.largest_slice`` (the slice the overlay and summary name too) unless the mask
    is empty there, then the slice where the mask is largest. Raises ValueError for an empty
    mask.
    """
    if lesion.mask.shape != result.volume.shape:
        raise ValueError(
            f"lesion {lesion.number} mask shape {lesion.mask.shape} differs from the volume's "
            f"{result.volume.shape}"
        )
    areas = lesion.mask.reshape(lesion.mask.shape[0], -1).sum(axis=1)
    if not areas.any():
        raise ValueError(f"lesion {lesion.number} has an empty mask")
    z = lesion.largest_slice
    if not 0 <= z < len(areas) or areas[z] == 0:
        fallback = int(np.argmax(areas))
        logger.warning(
            "lesion %d: largest_slice %d holds no voxel; outlining slice %d",
            lesion.number, z, fallback,
        )
        z = fallback
    plane = lesion.mask[z]
    _, row_spacing_mm, column_spacing_mm = result.volume.spacing_mm
    return LesionOutline(
        lesion_number=lesion.number,
        slice_index=z,
        source=result.volume.datasets[z],
        points=outline(plane),
        area_mm2=float(areas[z]) * row_spacing_mm * column_spacing_mm,
        mean_hu=float(result.volume.hu[z][plane].mean()),
    )


def _coordinates(drawn: LesionOutline) -> hd.sr.CoordinatesForMeasurement:
    return hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=drawn.points,
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(drawn.source.SOPClassUID),
            referenced_sop_instance_uid=str(drawn.source.SOPInstanceUID),
        ),
    )


def _measurements(drawn: LesionOutline, lesion: Lesion) -> list[hd.sr.Measurement]:
    """Area first (a viewer takes the drawing from the first NUM), then mean HU, then volume."""
    measurements = [
        hd.sr.Measurement(
            name=codes.fresh(codes.AREA),
            value=round(drawn.area_mm2, AREA_DIGITS),
            unit=codes.fresh(codes.UNIT_SQUARE_MILLIMETER),
            referenced_coordinates=[_coordinates(drawn)],
        )
    ]
    if math.isfinite(drawn.mean_hu):
        measurements.append(
            hd.sr.Measurement(
                name=codes.fresh(codes.ATTENUATION_COEFFICIENT),
                value=round(drawn.mean_hu, HU_DIGITS),
                unit=codes.fresh(codes.UNIT_HOUNSFIELD),
                derivation=codes.fresh(codes.MEAN),
                referenced_coordinates=[_coordinates(drawn)],
            )
        )
    measurements.append(
        hd.sr.Measurement(
            name=codes.fresh(codes.VOLUME),
            value=round(lesion.volume_ml, VOLUME_DIGITS),
            unit=codes.fresh(codes.UNIT_MILLILITER),
        )
    )
    return measurements


def _classification(result: StudyResult) -> list[hd.sr.QualitativeEvaluation]:
    """The study's predicted class as a qualitative evaluation of each lesion group."""
    if result.classification is None:
        return []
    return [
        hd.sr.QualitativeEvaluation(
            name=codes.fresh(codes.class_code(result.classification.label)),
            value=codes.fresh(codes.PRESENT),
        )
    ]


_SIDE_TEXT = {"left": "left lung", "right": "right lung", "bilateral": "both lungs"}


def lesion_label(lesion: Lesion) -> str:
    """The lesion's name for a reader: number, side and volume, as in the SEG and summary."""
    side = _SIDE_TEXT.get(lesion.side, lesion.side)
    return f"Lesion {lesion.number} ({side}, {lesion.volume_ml:.1f} mL)"


def _lesion_group(
    plan: SegmentPlan, lesion: Lesion, drawn: LesionOutline, result: StudyResult
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    group = _planar_group(plan, lesion, drawn, result)
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.fresh(codes.COMMENT),
            value=lesion_label(lesion),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def _planar_group(
    plan: SegmentPlan, lesion: Lesion, drawn: LesionOutline, result: StudyResult
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=plan.tracking_uid, identifier=CORNERSTONE_FREEHAND_TRACKING_ID
        ),
        finding_category=codes.fresh(codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE),
        finding_type=codes.fresh(codes.LESION),
        finding_sites=[
            hd.sr.FindingSite(
                codes.fresh(codes.LUNG),
                laterality=codes.fresh(codes.LATERALITY_CODES.get(lesion.side, codes.BILATERAL)),
            )
        ],
        algorithm_id=algorithm_identification(lesion_model(result)),
        measurements=_measurements(drawn, lesion),
        qualitative_evaluations=_classification(result) or None,
    )


def lesion_outlines(
    result: StudyResult, plans: Sequence[SegmentPlan]
) -> list[tuple[SegmentPlan, Lesion, LesionOutline]]:
    """Each lesion segment of ``plans`` with its lesion and outline, in segment order."""
    lesions = {lesion.number: lesion for lesion in result.lesions}
    drawn = []
    for plan in plans:
        if plan.kind != "lesion" or plan.lesion_number not in lesions:
            continue
        lesion = lesions[plan.lesion_number]
        drawn.append((plan, lesion, lesion_outline(result, lesion)))
    return drawn


def build_viewer_sr(
    result: StudyResult,
    plans: Sequence[SegmentPlan],
    uid_root: str,
    predecessors: Sequence[PriorReport] = (),
) -> hd.sr.Comprehensive3DSR | None:
    """Build the viewer report; ``plans`` are the SEG's (``pipeline.writers.seg``), whose
    lesion segments give each group its Tracking UID. None when there is no lesion segment."""
    drawn = lesion_outlines(result, plans)
    if not drawn:
        logger.info("no lesion to outline: no viewer SR for %s", result.volume.series_instance_uid)
        return None
    groups = [_lesion_group(plan, lesion, outline_, result) for plan, lesion, outline_ in drawn]
    outlined_images: dict[str, Dataset] = {}
    for _, _, outline_ in drawn:
        outlined_images.setdefault(str(outline_.source.SOPInstanceUID), outline_.source)
    report = measurement_report(groups, referenced_images=list(outlined_images.values()))
    series_uid, sop_uid = viewer_sr_uids(uid_root)
    classes = [codes.class_code(result.classification.label)] if result.classification else []
    sr = comprehensive_3d_sr(
        report,
        result.volume.datasets,
        series_uid=series_uid,
        series_number=VIEWER_SR_SERIES_NUMBER,
        series_description=VIEWER_SR_SERIES_DESCRIPTION,
        sop_uid=sop_uid,
        instance_number=VIEWER_SR_INSTANCE_NUMBER,
        predecessors=predecessors,
        uses_private_codes=codes.uses_private_scheme(*classes),
        models=[lesion_model(result)],
    )
    logger.info("built viewer SR %s with %d lesion outline(s)", sop_uid, len(groups))
    return sr


def write_viewer_sr(
    result: StudyResult,
    plans: Sequence[SegmentPlan],
    out_path: Path,
    uid_root: str,
    predecessors: Sequence[PriorReport] = (),
) -> hd.sr.Comprehensive3DSR | None:
    """Build the viewer report and write it to ``out_path``; None (nothing written) when
    there is no lesion to outline."""
    sr = build_viewer_sr(result, plans, uid_root, predecessors)
    if sr is None:
        return None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out_path)
    return sr
