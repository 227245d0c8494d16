"""DICOM Segmentation (SEG) of the lungs and lesions of one study result.

Segments: left lung, right lung, then one segment per lesion (with its own Tracking ID/UID,
so the SR can reference each lesion's segment). Segments do NOT overlap: a lung segment is
the lung minus the lesions. Viewers such as OHIF mis-measure overlapping segments (about
half the true volume for a lesion inside a lung), while the SR's lung volumes are measured on
the whole lung (the union), so nothing is lost by splitting. Empty segments are left out
(segment numbers stay consecutive) because a segment without frames is not valid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.valuerep import format_number_as_ds

from pipeline.types import ModelInfo, StudyResult
from pipeline.writers import codes
from pipeline.writers.equipment import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
    SOFTWARE_VERSIONS,
    equipment_for,
)
from pipeline.writers.uids import derive_uid

logger = logging.getLogger(__name__)

SEG_SERIES_NUMBER = 9001
SEG_INSTANCE_NUMBER = 1
SEG_SERIES_DESCRIPTION = "AI lung/lesion segmentation"
SEG_CONTENT_LABEL = "LUNG_LESIONS"

# Recommended display colours (CIELab, PS3.3 C.10.7.1.1) as sRGB, converted by highdicom.
LEFT_LUNG_RGB = (60, 120, 230)
RIGHT_LUNG_RGB = (70, 190, 120)
LESION_RGB = ((235, 60, 45), (245, 160, 30), (230, 60, 200), (250, 225, 40), (150, 80, 230))


@dataclass(frozen=True)
class SegmentPlan:
    """One segment of the SEG: which mask it holds and how the SR refers to it."""

    number: int  # SEG segment number, 1-based, consecutive
    kind: str  # "lung" or "lesion"
    side: str  # "left", "right" or "bilateral"
    label: str
    tracking_id: str
    tracking_uid: str
    lesion_number: int | None = None


def seg_uids(uid_root: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SEG of the job with ``uid_root``."""
    return derive_uid(uid_root, "seg", "series"), derive_uid(uid_root, "seg", "instance")


def plan_segments(result: StudyResult, uid_root: str) -> tuple[SegmentPlan, ...]:
    """Segment numbering shared by the SEG and the SR writers (non-empty masks only)."""
    plans: list[SegmentPlan] = []
    lesion_union = _lesion_union(result)
    for side, mask in (("left", result.lungs.left), ("right", result.lungs.right)):
        if not np.any(mask & ~lesion_union):
            logger.warning("%s lung mask is empty; no segment written for it", side)
            continue
        plans.append(
            SegmentPlan(
                number=len(plans) + 1,
                kind="lung",
                side=side,
                label=f"{side.capitalize()} lung",
                tracking_id=f"{side}-lung",
                tracking_uid=derive_uid(uid_root, "tracking", f"{side}-lung"),
            )
        )
    for lesion in sorted(result.lesions, key=lambda item: item.number):
        if not lesion.mask.any():
            continue
        plans.append(
            SegmentPlan(
                number=len(plans) + 1,
                kind="lesion",
                side=lesion.side,
                label=f"Lesion {lesion.number}",
                tracking_id=f"lesion-{lesion.number}",
                tracking_uid=derive_uid(uid_root, "tracking", f"lesion-{lesion.number}"),
                lesion_number=lesion.number,
            )
        )
    return tuple(plans)


def label_array(result: StudyResult, plans: tuple[SegmentPlan, ...]) -> npt.NDArray[np.integer]:
    """(z, y, x) array of segment numbers: lungs minus lesions, then lesions on top."""
    dtype = np.uint8 if len(plans) < 256 else np.uint16
    labels = np.zeros(result.volume.shape, dtype=dtype)
    lesions = {lesion.number: lesion for lesion in result.lesions}
    for plan in plans:
        if plan.kind == "lung":
            mask = result.lungs.left if plan.side == "left" else result.lungs.right
            labels[mask] = plan.number
    for plan in plans:
        if plan.kind == "lesion" and plan.lesion_number is not None:
            labels[lesions[plan.lesion_number].mask] = plan.number
    return labels


def algorithm_identification(model: ModelInfo) -> hd.AlgorithmIdentificationSequence:
    """Algorithm name, version, family (CID 7162) and weights checksum for a SEG segment."""
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.algorithm_family(model),
        version=model.version,
        parameters={"sha256": model.sha256} if model.sha256 else None,
    )


def _lesion_union(result: StudyResult) -> npt.NDArray[np.bool_]:
    union = np.zeros(result.volume.shape, dtype=bool)
    for lesion in result.lesions:
        union |= lesion.mask
    return union


def lung_model(result: StudyResult) -> ModelInfo:
    """The lung segmenter's identity: the algorithm named by ``LungMask.method``
    ("name@version"), else the first listed one (the runner lists the lung stage first)."""
    name, _, version = result.lungs.method.partition("@")
    for model in result.algorithms:
        if model.name == name and (not version or model.version == version):
            return model
    if result.algorithms:
        return result.algorithms[0]
    return ModelInfo(name or "lung-segmentation", version or "unknown")


def lesion_model(result: StudyResult) -> ModelInfo:
    """The lesion localizer's identity: the last listed algorithm that is neither the lung
    segmenter nor the classifier (the runner lists lungs, classifier, localizer)."""
    others = {lung_model(result)}
    if result.classification is not None:
        others.add(result.classification.model)
    for model in reversed(result.algorithms):
        if model not in others:
            return model
    return ModelInfo("lesion-localizer", "unknown")


def _segment(
    plan: SegmentPlan, model: ModelInfo, prop: tuple[CodedConcept, CodedConcept],
    rgb: tuple[int, int, int], **extra: Any,
) -> hd.seg.SegmentDescription:
    """One automatic segment: ``prop`` is the segmented property (category, type)."""
    category, property_type = prop
    return hd.seg.SegmentDescription(
        segment_number=plan.number,
        segment_label=plan.label,
        segmented_property_category=codes.fresh(category),
        segmented_property_type=codes.fresh(property_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(model),
        tracking_id=plan.tracking_id,
        tracking_uid=plan.tracking_uid,
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
        **extra,
    )


def _description(plan: SegmentPlan, result: StudyResult) -> hd.seg.SegmentDescription:
    if plan.kind == "lung":
        rgb = LEFT_LUNG_RGB if plan.side == "left" else RIGHT_LUNG_RGB
        description = _segment(
            plan, lung_model(result), (codes.ANATOMICAL_STRUCTURE, codes.LUNG), rgb
        )
        # Laterality as a modifier of the property type (PS3.3 C.8.20.2, CID 244).
        property_type = description.SegmentedPropertyTypeCodeSequence[0]
        property_type.SegmentedPropertyTypeModifierCodeSequence = [
            codes.fresh(codes.LATERALITY_CODES[plan.side])
        ]
        return description
    description = _segment(
        plan, lesion_model(result), (codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.LESION),
        LESION_RGB[(plan.number - 1) % len(LESION_RGB)],
        anatomic_regions=[codes.fresh(codes.LUNG)],
    )
    description.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
        codes.fresh(codes.LATERALITY_CODES.get(plan.side, codes.BILATERAL))
    ]
    return description


FRAME_LATERALITY_BOTH = "B"


def _add_frame_anatomy(seg: hd.seg.Segmentation) -> None:
    """Frame Anatomy (shared by all frames): both lungs, Frame Laterality "B".

    General Series Laterality (type 2C) is required unless image or frame laterality is given
    (PixelMed flags its absence), but it only takes R or L, and the segments cover both
    lungs; dciodvfy in turn refuses an empty one. Frame Laterality "B" states what is true
    and satisfies both validators (dciodvfy notes the macro as a standard extension).
    """
    region = Dataset()
    lung = codes.LUNG
    region.CodeValue = lung.value
    region.CodingSchemeDesignator = lung.scheme_designator
    region.CodeMeaning = lung.meaning
    anatomy = Dataset()
    anatomy.AnatomicRegionSequence = [region]
    anatomy.FrameLaterality = FRAME_LATERALITY_BOTH
    seg.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [anatomy]


def _set_slice_spacing(seg: hd.seg.Segmentation, result: StudyResult) -> None:
    """Spacing Between Slices of the SEG: the volume's, measured along the slice normal.

    highdicom copies the source image's Spacing Between Slices when it has one, and some
    scanners write it signed (negative when the image positions run against the slice
    normal), which is invalid in a SEG and gives negative volumes to a reader that trusts it.
    The volume's spacing is the distance between neighbouring slice positions, always
    positive; a missing or non-positive Slice Thickness gets the same value.
    """
    spacing = float(result.volume.spacing_mm[0])
    if not spacing > 0:
        raise ValueError(f"slice spacing must be positive, got {spacing}")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    measures.SpacingBetweenSlices = format_number_as_ds(spacing)
    thickness = measures.get("SliceThickness")
    if thickness is None or thickness == "" or float(thickness) <= 0:
        measures.SliceThickness = format_number_as_ds(spacing)


def _segment_models(result: StudyResult, plans: tuple[SegmentPlan, ...]) -> list[ModelInfo]:
    """The algorithms whose output is in the SEG: the lung segmenter, the localizer if any
    lesion segment exists."""
    models = [lung_model(result)]
    if any(plan.kind == "lesion" for plan in plans):
        models.append(lesion_model(result))
    return models


def build_seg(
    result: StudyResult, uid_root: str, plans: tuple[SegmentPlan, ...] | None = None
) -> tuple[hd.seg.Segmentation, tuple[SegmentPlan, ...]]:
    """Build the SEG (not yet written) and the segment plan the SR needs.

    ``plans`` defaults to ``plan_segments(result, uid_root)``. Raises ValueError when there
    is nothing to segment (no lungs and no lesions).
    """
    if plans is None:
        plans = plan_segments(result, uid_root)
    if not plans:
        raise ValueError("no non-empty lung or lesion mask to write into a SEG")
    started = time.perf_counter()
    labels = label_array(result, plans)
    series_uid, sop_uid = seg_uids(uid_root)
    seg = hd.seg.Segmentation(
        source_images=list(result.volume.datasets),
        pixel_array=labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(plan, result) for plan in plans],
        series_instance_uid=series_uid,
        series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=SEG_INSTANCE_NUMBER,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSIONS,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        content_label=SEG_CONTENT_LABEL,
        content_description=SEG_SERIES_DESCRIPTION,
        series_description=SEG_SERIES_DESCRIPTION,
        omit_empty_frames=True,
        contributing_equipment=equipment_for(result, _segment_models(result, plans)),
    )
    _add_frame_anatomy(seg)
    _set_slice_spacing(seg, result)
    logger.info(
        "built SEG %s: %d segments, %d frames in %.2f s",
        sop_uid, len(plans), int(seg.NumberOfFrames), time.perf_counter() - started,
    )
    return seg, plans


def write_seg(
    result: StudyResult, out_path: Path, uid_root: str
) -> tuple[hd.seg.Segmentation, tuple[SegmentPlan, ...]]:
    """Build the SEG of ``result`` and write it to ``out_path``; return it and its plan."""
    seg, plans = build_seg(result, uid_root)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out_path)
    return seg, plans
