"""TID 1500 SR writer: conformance (dciodvfy), read-back (srread), dcmtk rendering, content
tree (lung, lesion and classification groups referencing the SEG), predecessors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from dicomnode.contracts import PriorReport
from pipeline.types import CTVolume, LungMask, StudyResult
from pipeline.writers import codes
from pipeline.writers.seg import write_seg
from pipeline.writers.sr import (
    SR_SERIES_NUMBER,
    build_sr,
    sr_uids,
    write_sr,
)
from tests.peers.dicom3tools import dciodvfy_errors
from tests.pipeline.conftest import dsrdump_text, make_result

UID_ROOT = "2.25.3333"


@pytest.fixture(scope="module")
def written(
    phantom_result: StudyResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, PriorReport]:
    folder = tmp_path_factory.mktemp("sr")
    seg, plans = write_seg(phantom_result, folder / "seg.dcm", UID_ROOT)
    prior = PriorReport(
        study_instance_uid=phantom_result.volume.study_instance_uid,
        series_instance_uid="2.25.77",
        sop_instance_uid="2.25.78",
        sop_class_uid=Comprehensive3DSRStorage,
    )
    write_sr(phantom_result, seg, plans, folder / "sr.dcm", UID_ROOT, [prior])
    return folder / "seg.dcm", folder / "sr.dcm", prior


def _groups(sr: Any) -> list[Any]:
    return hd.sr.utils.find_content_items(
        sr.content[0], name=dicom_codes.DCM.MeasurementGroup, recursive=True
    )


def _texts(group: Any, name: object) -> list[str]:
    return [str(item.value) for item in group.ContentSequence if item.name == name]


def _child(group: Any, name: object) -> list[Any]:
    return [item for item in group.ContentSequence if item.name == name]


def _measurement(group: Any, name: object) -> float:
    values = [float(item.value) for item in _child(group, name)]
    assert len(values) == 1, values
    return values[0]


def test_sr_passes_dciodvfy_and_renders_with_dsrdump(written: tuple[Path, Path, object]) -> None:
    _, sr_path, _ = written
    assert dciodvfy_errors(sr_path) == []
    text = dsrdump_text(sr_path)
    assert "Imaging Measurement Report" in text
    assert "CT unspecified body region" in text
    assert "Qualitative Evaluations" in text
    assert "Left lung" in text and "Lesion 2" in text


def test_sr_reads_back_with_the_lung_and_lesion_groups(
    written: tuple[Path, Path, object], phantom_result: StudyResult
) -> None:
    seg_path, sr_path, _ = written
    sr = hd.sr.srread(sr_path)
    seg = hd.seg.segread(seg_path)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == sr_uids(UID_ROOT)
    assert int(sr.SeriesNumber) == SR_SERIES_NUMBER
    assert sr.StudyInstanceUID == phantom_result.volume.study_instance_uid
    groups = _groups(sr)
    by_id = {
        _texts(g, dicom_codes.DCM.TrackingIdentifier)[0]: g for g in groups
    }
    assert {"Left lung", "Right lung", "Lesion 1", "Lesion 2"} <= set(by_id)
    segment_numbers = {}
    for name, group in by_id.items():
        references = _child(group, dicom_codes.DCM.ReferencedSegment)
        if not references:
            continue
        item = references[0].ReferencedSOPSequence[0]
        assert item.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert item.ReferencedSOPClassUID == SegmentationStorage
        segment_numbers[name] = int(item.ReferencedSegmentNumber)
        # The group's tracking UID is the referenced segment's tracking UID.
        tracking_uid = _texts(group, dicom_codes.DCM.TrackingUniqueIdentifier)[0]
        segment = seg.SegmentSequence[segment_numbers[name] - 1]
        assert str(segment.TrackingUID) == tracking_uid
    assert segment_numbers == {"Left lung": 1, "Right lung": 2, "Lesion 1": 3, "Lesion 2": 4}
    stats = {s.side: s for s in phantom_result.lung_stats}
    left = by_id["Left lung"]
    assert _measurement(left, codes.VOLUME) == pytest.approx(stats["left"].volume_ml, abs=1e-3)
    assert _measurement(left, codes.ATTENUATION_COEFFICIENT) == pytest.approx(
        stats["left"].mean_hu, abs=0.01
    )
    assert _measurement(left, codes.LESION_BURDEN) == pytest.approx(
        stats["left"].lesion_burden_percent, abs=1e-3
    )
    lesion = by_id["Lesion 1"]
    assert _measurement(lesion, codes.VOLUME) == pytest.approx(
        phantom_result.lesions[0].volume_ml, abs=1e-3
    )
    finding = _child(lesion, dicom_codes.DCM.Finding)[0]
    assert finding.value == codes.LESION


def _evaluations(sr: Any) -> dict[str, Any]:
    """Items of the document-level Qualitative Evaluations container, by concept meaning."""
    [container] = [
        item for item in sr.content[0].ContentSequence
        if item.name == codes.QUALITATIVE_EVALUATIONS
    ]
    return {item.name.meaning: item for item in container.ContentSequence}


def test_sr_classification_is_a_study_level_evaluation_with_probabilities(
    written: tuple[Path, Path, object], phantom_result: StudyResult
) -> None:
    sr = hd.sr.srread(written[1])
    # No measurement group without a region: only the lung and lesion groups remain.
    identifiers = {_texts(g, dicom_codes.DCM.TrackingIdentifier)[0] for g in _groups(sr)}
    assert identifiers == {"Left lung", "Right lung", "Lesion 1", "Lesion 2"}
    items = _evaluations(sr)
    covid = items[codes.PNEUMONIA_SARS_COV_2.meaning]
    other = items[codes.NOT_COVID19_PNEUMONIA.meaning]
    assert covid.name == codes.PNEUMONIA_SARS_COV_2 and covid.value == codes.PRESENT
    assert other.value == codes.ABSENT
    assert _measurement(covid, codes.PROBABILITY) == pytest.approx(0.75)
    assert _measurement(other, codes.PROBABILITY) == pytest.approx(0.25)
    assert str(items["Algorithm Name"].value) == "test-classifier"
    assert str(items["Algorithm Version"].value) == "0.0.1"
    # The private concept ("no COVID-19 pneumonia") is declared.
    schemes = [str(item.CodingSchemeDesignator) for item in sr.CodingSchemeIdentificationSequence]
    assert codes.PRIVATE_SCHEME in schemes


def test_sr_lists_predecessors_and_evidence(written: tuple[Path, Path, PriorReport]) -> None:
    seg_path, sr_path, prior = written
    sr = hd.sr.srread(sr_path)
    series = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == prior.series_instance_uid
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == prior.sop_instance_uid
    evidence = {
        str(item.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert hd.seg.segread(seg_path).SOPInstanceUID in evidence
    assert prior.sop_instance_uid not in evidence


def test_sr_without_segments_reports_the_classification(phantom_result: StudyResult) -> None:
    sr = build_sr(phantom_result, None, (), UID_ROOT)
    assert _groups(sr) == []
    items = _evaluations(sr)
    expected = [codes.NOT_COVID19_PNEUMONIA.meaning, codes.PNEUMONIA_SARS_COV_2.meaning]
    assert list(items)[:2] == expected


def test_sr_with_nothing_to_report_is_refused(phantom_result: StudyResult) -> None:
    result = make_result(phantom_result.volume, phantom_result.lungs, classification=False)
    with pytest.raises(ValueError, match="nothing to report"):
        build_sr(result, None, (), UID_ROOT)


def test_sr_without_private_codes_declares_no_private_scheme(
    phantom_result: StudyResult, tmp_path: Path
) -> None:
    result = make_result(phantom_result.volume, phantom_result.lungs, classification=False)
    seg, plans = write_seg(result, tmp_path / "seg.dcm", UID_ROOT)
    sr = build_sr(result, seg, plans, UID_ROOT)
    assert "CodingSchemeIdentificationSequence" not in sr
    assert "PredecessorDocumentsSequence" not in sr


@pytest.mark.slow
def test_covid_study_sr_conforms_and_references_the_seg(
    covid_volume: CTVolume, covid_lungs: LungMask, tmp_path: Path
) -> None:
    result = make_result(covid_volume, covid_lungs, classification=True)
    seg, plans = write_seg(result, tmp_path / "seg.dcm", UID_ROOT)
    write_sr(result, seg, plans, tmp_path / "sr.dcm", UID_ROOT)
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    lung_groups = [
        g for g in _groups(sr) if _child(g, dicom_codes.DCM.ReferencedSegment)
    ]
    assert len(lung_groups) == 2
    numbers = sorted(
        int(_child(g, dicom_codes.DCM.ReferencedSegment)[0].ReferencedSOPSequence[0]
            .ReferencedSegmentNumber)
        for g in lung_groups
    )
    assert numbers == [1, 2]
    assert "Right lung" in dsrdump_text(tmp_path / "sr.dcm")


def test_sr_references_the_segment_of_a_single_segment_seg(
    phantom_result: StudyResult, tmp_path: Path
) -> None:
    # With one segment highdicom moves the Segment Identification Sequence into the shared
    # functional groups; the SR must still find the segment's frames and source images.
    lungs = LungMask(
        phantom_result.lungs.left, np.zeros_like(phantom_result.lungs.right),
        phantom_result.lungs.method,
    )
    result = make_result(phantom_result.volume, lungs, classification=False)
    seg, plans = write_seg(result, tmp_path / "seg.dcm", UID_ROOT)
    assert "SegmentIdentificationSequence" in seg.SharedFunctionalGroupsSequence[0]
    write_sr(result, seg, plans, tmp_path / "sr.dcm", UID_ROOT)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    group = _groups(hd.sr.srread(tmp_path / "sr.dcm"))[0]
    reference = _child(group, dicom_codes.DCM.ReferencedSegment)[0]
    assert int(reference.ReferencedSOPSequence[0].ReferencedSegmentNumber) == 1
    sources = _child(group, dicom_codes.DCM.SourceImageForSegmentation)
    left_slices = {
        str(phantom_result.volume.datasets[z].SOPInstanceUID)
        for z in np.flatnonzero(lungs.left.any(axis=(1, 2)))
    }
    assert {str(s.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for s in sources} == (
        left_slices
    )
