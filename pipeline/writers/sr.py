"""TID 1500 Measurement Report (Comprehensive 3D SR) of one study result.

Content (PS3.16 TID 1500): a device observer naming this node, procedure "CT unspecified
body region" (CID 100 has no chest CT concept), then measurement groups:

- one TID 1411 volumetric group per lung, referencing its SEG segment, with volume (mL),
  mean attenuation (HU) and, when lesions were localized, lesion burden (%). The lung numbers
  cover the whole lung (lesions included): the SEG stores lungs minus lesions so its segments
  do not overlap, and the lesion segments of that side make up the rest;
- one TID 1411 group per lesion (tracking ID/UID as in its SEG segment), finding "Lesion"
  in the lung of its side, with volume and mean attenuation;
- when a classifier ran, no group but the study-level "Qualitative Evaluations" container
  (``pipeline.writers.classification``): each class's finding Present or Absent with its
  probability, and the classifier's name and version.

Every algorithm is listed in the Contributing Equipment Sequence
(``pipeline.writers.equipment``), and code meanings are spelled as the templates spell them
(``codes.conform_meanings``).

Reports that this one replaces are listed in the Predecessor Documents Sequence (PS3.3
C.17.2.3); they are not evidence of this report's content, so they do not go into the
evidence sequences.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from dicomnode.contracts import PriorReport
from pipeline.types import Lesion, LungStats, ModelInfo, StudyResult
from pipeline.writers import codes
from pipeline.writers.classification import classification_evaluations
from pipeline.writers.equipment import (
    DEVICE_SERIAL_NUMBER,
    MANUFACTURER,
    MANUFACTURER_MODEL_NAME,
    SOFTWARE_VERSIONS,
    algorithm_equipment,
)
from pipeline.writers.seg import SegmentPlan, lesion_model, lung_model
from pipeline.writers.uids import derive_uid

logger = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9002
SR_INSTANCE_NUMBER = 1
SR_SERIES_DESCRIPTION = "AI chest CT measurement report"
# The Device Observer UID names this software, the same for every report it writes.
DEVICE_OBSERVER_UID = derive_uid("urn:chest-ct-dicomnode", "device-observer")
DEVICE_OBSERVER_NAME = "chest-ct-dicomnode"


def sr_uids(uid_root: str) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) of the SR of the job with ``uid_root``."""
    return derive_uid(uid_root, "sr", "series"), derive_uid(uid_root, "sr", "instance")


WEIGHTS_CHECKSUM_PARAMETER = "sha256"  # name of the weights checksum among algorithm parameters


def algorithm_identification(model: ModelInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 name, version and family; a trained model's weights checksum as its
    "Algorithm Parameters" (``sha256=<hex>``), which pins the exact weights used."""
    return hd.sr.AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=[f"{WEIGHTS_CHECKSUM_PARAMETER}={model.sha256}"] if model.sha256 else None,
        family=codes.algorithm_family(model),
    )


def referenced_segment(seg: hd.seg.Segmentation, segment_number: int) -> hd.sr.ReferencedSegment:
    """Reference to one SEG segment with the source images its frames were derived from.

    Written here rather than with ``ReferencedSegment.from_segmentation``, which (highdicom
    0.28) fails on a single-segment SEG, where the Segment Identification Sequence sits in
    the shared functional groups instead of each frame's.
    """
    shared = seg.SharedFunctionalGroupsSequence[0]
    shared_segment = None
    if "SegmentIdentificationSequence" in shared:
        shared_segment = int(shared.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    sources: dict[str, hd.sr.SourceImageForSegmentation] = {}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        if "SegmentIdentificationSequence" in frame:
            number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        else:
            number = shared_segment if shared_segment is not None else -1
        if number != segment_number:
            continue
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uid = str(source.ReferencedSOPInstanceUID)
                if uid not in sources:
                    sources[uid] = hd.sr.SourceImageForSegmentation(
                        referenced_sop_class_uid=str(source.ReferencedSOPClassUID),
                        referenced_sop_instance_uid=uid,
                    )
    if not sources:
        raise ValueError(f"segment {segment_number} has no frame in SEG {seg.SOPInstanceUID}")
    return hd.sr.ReferencedSegment(
        sop_class_uid=str(seg.SOPClassUID),
        sop_instance_uid=str(seg.SOPInstanceUID),
        segment_number=segment_number,
        source_images=list(sources.values()),
    )


def _volume(volume_ml: float) -> hd.sr.Measurement:
    return hd.sr.Measurement(
        name=codes.fresh(codes.VOLUME),
        value=round(volume_ml, 3),
        unit=codes.fresh(codes.UNIT_MILLILITER),
        method=codes.fresh(codes.SUM_OF_SEGMENTED_VOXEL_VOLUMES),
    )


def _mean_hu(mean_hu: float) -> hd.sr.Measurement | None:
    if not math.isfinite(mean_hu):
        return None
    return hd.sr.Measurement(
        name=codes.fresh(codes.ATTENUATION_COEFFICIENT),
        value=round(mean_hu, 2),
        unit=codes.fresh(codes.UNIT_HOUNSFIELD),
        derivation=codes.fresh(codes.MEAN),
    )


def _roi_group(
    plan: SegmentPlan, seg: hd.seg.Segmentation, model: ModelInfo,
    finding: tuple[CodedConcept, CodedConcept], laterality: CodedConcept,
    measurements: list[hd.sr.Measurement],
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for one segment of the SEG: ``finding`` is (category, type), the site is the
    lung on the ``laterality`` side."""
    category, finding_type = finding
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=plan.tracking_uid, identifier=plan.label
        ),
        referenced_segment=referenced_segment(seg, plan.number),
        finding_category=codes.fresh(category),
        finding_type=codes.fresh(finding_type),
        finding_sites=[
            hd.sr.FindingSite(codes.fresh(codes.LUNG), laterality=codes.fresh(laterality))
        ],
        algorithm_id=algorithm_identification(model),
        measurements=measurements,
    )


def _lung_group(
    plan: SegmentPlan, stats: LungStats, seg: hd.seg.Segmentation, model: ModelInfo
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    measurements = [_volume(stats.volume_ml)]
    mean = _mean_hu(stats.mean_hu)
    if mean is not None:
        measurements.append(mean)
    if stats.lesion_burden_percent is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.fresh(codes.LESION_BURDEN),
                value=round(stats.lesion_burden_percent, 3),
                unit=codes.fresh(codes.UNIT_PERCENT),
            )
        )
    return _roi_group(
        plan, seg, model, (codes.ANATOMICAL_STRUCTURE, codes.LUNG),
        codes.LATERALITY_CODES[plan.side], measurements,
    )


def _lesion_group(
    plan: SegmentPlan, lesion: Lesion, seg: hd.seg.Segmentation, model: ModelInfo
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    measurements = [_volume(lesion.volume_ml)]
    mean = _mean_hu(lesion.mean_hu)
    if mean is not None:
        measurements.append(mean)
    return _roi_group(
        plan, seg, model, (codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, codes.LESION),
        codes.LATERALITY_CODES.get(lesion.side, codes.BILATERAL), measurements,
    )


def observation_context() -> hd.sr.ObservationContext:
    """TID 1002 device observer: this node, by a fixed UID and name, in every report it writes."""
    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID,
            name=DEVICE_OBSERVER_NAME,
            manufacturer_name=MANUFACTURER,
            model_name=MANUFACTURER_MODEL_NAME,
            serial_number=DEVICE_SERIAL_NUMBER,
        ),
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def predecessor_dataset(prior: PriorReport) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = prior.study_instance_uid
    ds.SeriesInstanceUID = prior.series_instance_uid
    ds.SOPInstanceUID = prior.sop_instance_uid
    ds.SOPClassUID = prior.sop_class_uid
    return ds


def measurement_report(
    groups: Sequence[
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
        | hd.sr.MeasurementsAndQualitativeEvaluations
    ],
    referenced_images: Sequence[Dataset] | None = None,
) -> hd.sr.MeasurementReport:
    """TID 1500 with this node's observer context, procedure and language around ``groups``.

    Without groups the "Imaging Measurements" container is left out: highdicom 0.28 requires
    at least one group, so a placeholder is built and its container removed.
    """
    placeholder = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="placeholder")
    )
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(),
        procedure_reported=codes.fresh(codes.PROCEDURE_CT),
        imaging_measurements=list(groups) or [placeholder],
        language_of_content_item_and_descendants=hd.sr.LanguageOfContentItemAndDescendants(
            hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
        ),
        referenced_images=list(referenced_images) if referenced_images else None,
    )
    if not groups:
        root = report[0]
        root.ContentSequence = [
            item for item in root.ContentSequence
            if item.name != dicom_codes.DCM.ImagingMeasurements
        ]
    return report


def _region_groups(
    result: StudyResult, seg: hd.seg.Segmentation, plans: Sequence[SegmentPlan]
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 group per lung and lesion segment of ``plans``."""
    stats_by_side = {stats.side: stats for stats in result.lung_stats}
    lesions = {lesion.number: lesion for lesion in result.lesions}
    lungs, localizer = lung_model(result), lesion_model(result)
    groups = []
    for plan in plans:
        if plan.kind == "lung" and plan.side in stats_by_side:
            groups.append(_lung_group(plan, stats_by_side[plan.side], seg, lungs))
        elif plan.kind == "lesion" and plan.lesion_number in lesions:
            groups.append(_lesion_group(plan, lesions[plan.lesion_number], seg, localizer))
    return groups


def _report_models(result: StudyResult, seg: hd.seg.Segmentation | None) -> list[ModelInfo]:
    models = [lung_model(result)] if seg is not None else []
    if seg is not None and result.lesions:
        models.append(lesion_model(result))
    if result.classification is not None:
        models.append(result.classification.model)
    return models


def build_sr(
    result: StudyResult,
    seg: hd.seg.Segmentation | None,
    plans: Sequence[SegmentPlan],
    uid_root: str,
    predecessors: Sequence[PriorReport] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the TID 1500 report; ``seg``/``plans`` come from ``pipeline.writers.seg``.

    Raises ValueError when there is nothing to report (no segment and no classification).
    """
    groups = _region_groups(result, seg, plans) if seg is not None else []
    evaluations = (
        classification_evaluations(result.classification)
        if result.classification is not None else None
    )
    if not groups and evaluations is None:
        raise ValueError("nothing to report: no segment and no classification")
    report = measurement_report(groups)
    if evaluations is not None:
        report[0].ContentSequence.append(evaluations)
    evidence: list[Dataset] = list(result.volume.datasets)
    if seg is not None:
        evidence.append(seg)
    series_uid, sop_uid = sr_uids(uid_root)
    concepts = [codes.class_code(name) for name in (
        result.classification.probabilities if result.classification else {}
    )]
    uses_private = any(s.lesion_burden_percent is not None for s in result.lung_stats) or (
        codes.uses_private_scheme(*concepts)
    )
    sr = comprehensive_3d_sr(
        report,
        evidence,
        series_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        series_description=SR_SERIES_DESCRIPTION,
        sop_uid=sop_uid,
        instance_number=SR_INSTANCE_NUMBER,
        predecessors=predecessors,
        uses_private_codes=uses_private,
        models=_report_models(result, seg),
    )
    logger.info("built SR %s with %d measurement groups", sop_uid, len(groups))
    return sr


def comprehensive_3d_sr(
    report: hd.sr.MeasurementReport,
    evidence: Sequence[Dataset],
    *,
    series_uid: str,
    series_number: int,
    series_description: str,
    sop_uid: str,
    instance_number: int,
    predecessors: Sequence[PriorReport],
    uses_private_codes: bool,
    models: Sequence[ModelInfo],
) -> hd.sr.Comprehensive3DSR:
    """A preliminary, complete Comprehensive 3D SR by this device; earlier reports of the study
    are listed as predecessors, the private coding scheme is declared when it is used and each
    algorithm in ``models`` is listed as contributing equipment. Code meanings are spelled as
    the templates spell them."""
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=[predecessor_dataset(p) for p in predecessors] or None,
        series_description=series_description,
        manufacturer_model_name=MANUFACTURER_MODEL_NAME,
        software_versions=SOFTWARE_VERSIONS,
        device_serial_number=DEVICE_SERIAL_NUMBER,
        coding_schemes=[codes.private_coding_scheme()] if uses_private_codes else None,
        contributing_equipment=algorithm_equipment(models),
    )
    codes.conform_meanings(sr.ContentSequence)
    return sr


def write_sr(
    result: StudyResult,
    seg: hd.seg.Segmentation | None,
    plans: Sequence[SegmentPlan],
    out_path: Path,
    uid_root: str,
    predecessors: Sequence[PriorReport] = (),
) -> hd.sr.Comprehensive3DSR:
    """Build the report of ``result`` and write it to ``out_path``."""
    sr = build_sr(result, seg, plans, uid_root, predecessors)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(out_path)
    return sr
