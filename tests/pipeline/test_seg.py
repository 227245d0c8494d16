"""SEG writer: conformance (dciodvfy), read-back (segread), voxel-exact masks, segment
descriptions, non-overlap, deterministic UIDs; on the phantom and on the real COVID study."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from pipeline.types import CTVolume, LungMask, StudyResult
from pipeline.writers import codes
from pipeline.writers.equipment import algorithm_device_uid
from pipeline.writers.seg import (
    SEG_SERIES_DESCRIPTION,
    SEG_SERIES_NUMBER,
    build_seg,
    lesion_model,
    lung_model,
    plan_segments,
    seg_uids,
    write_seg,
)
from pipeline.writers.uids import is_valid_uid
from tests.peers.dicom3tools import dciodvfy_errors
from tests.pipeline.conftest import make_result

UID_ROOT = "2.25.1111"


def _read_labels(path: Path, volume: CTVolume) -> np.ndarray:
    """The SEG's label map on the source grid (0 where no segment), via highdicom."""
    seg = hd.seg.segread(path)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    return seg.get_pixels_by_source_instance(
        uids, combine_segments=True, assert_missing_frames_are_empty=True
    )


def _code(item: Dataset) -> tuple[str, str]:
    value = item.CodeValue if "CodeValue" in item else item.LongCodeValue
    return str(value), str(item.CodingSchemeDesignator)


@pytest.fixture(scope="module")
def phantom_seg(phantom_result: StudyResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    write_seg(phantom_result, path, UID_ROOT)
    return path


def test_phantom_seg_passes_dciodvfy(phantom_seg: Path) -> None:
    assert dciodvfy_errors(phantom_seg) == []


def test_phantom_seg_masks_match_voxel_for_voxel(
    phantom_seg: Path, phantom_result: StudyResult
) -> None:
    labels = _read_labels(phantom_seg, phantom_result.volume)
    lesions = phantom_result.lesions
    union = lesions[0].mask | lesions[1].mask
    np.testing.assert_array_equal(labels == 1, phantom_result.lungs.left & ~union)
    np.testing.assert_array_equal(labels == 2, phantom_result.lungs.right & ~union)
    np.testing.assert_array_equal(labels == 3, lesions[0].mask)
    np.testing.assert_array_equal(labels == 4, lesions[1].mask)
    # Non-overlapping segments rebuild the whole lungs: lung segment plus its lesions.
    np.testing.assert_array_equal(labels > 0, phantom_result.lungs.both)


def test_phantom_seg_describes_every_segment(phantom_seg: Path) -> None:
    seg = hd.seg.segread(phantom_seg)
    assert seg.SegmentationType == "BINARY"
    assert int(seg.SeriesNumber) == SEG_SERIES_NUMBER
    assert seg.SeriesDescription == SEG_SERIES_DESCRIPTION
    assert seg.ContentLabel and seg.Manufacturer and seg.SoftwareVersions
    descriptions = {int(item.SegmentNumber): item for item in seg.SegmentSequence}
    assert sorted(descriptions) == [1, 2, 3, 4]
    assert [descriptions[n].SegmentLabel for n in (1, 2, 3, 4)] == [
        "Left lung", "Right lung", "Lesion 1", "Lesion 2"
    ]
    for number in (1, 2):
        item = descriptions[number]
        assert _code(item.SegmentedPropertyCategoryCodeSequence[0]) == ("91723000", "SCT")
        property_type = item.SegmentedPropertyTypeCodeSequence[0]
        assert _code(property_type) == ("39607008", "SCT")
        laterality = property_type.SegmentedPropertyTypeModifierCodeSequence[0]
        assert _code(laterality) == (("7771000" if number == 1 else "24028007"), "SCT")
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == (
            "morphological-lung"
        )
    for number in (3, 4):
        item = descriptions[number]
        assert _code(item.SegmentedPropertyCategoryCodeSequence[0]) == ("49755003", "SCT")
        assert _code(item.SegmentedPropertyTypeCodeSequence[0]) == ("52988006", "SCT")
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == (
            "test-localizer"
        )
    for item in descriptions.values():
        assert len(item.RecommendedDisplayCIELabValue) == 3
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert is_valid_uid(str(item.TrackingUID)) and item.TrackingID
    assert len({str(item.TrackingUID) for item in descriptions.values()}) == 4
    assert len({tuple(item.RecommendedDisplayCIELabValue) for item in descriptions.values()}) == 4


def test_phantom_seg_references_every_source_instance_and_frame_of_reference(
    phantom_seg: Path, phantom_result: StudyResult
) -> None:
    seg = hd.seg.segread(phantom_seg)
    volume = phantom_result.volume
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in volume.datasets}
    assert seg.FrameOfReferenceUID == volume.frame_of_reference_uid
    assert seg.StudyInstanceUID == volume.study_instance_uid
    # Empty frames are omitted: fewer frames than slices x segments.
    assert int(seg.NumberOfFrames) < volume.shape[0] * 4


def test_seg_uids_are_deterministic(phantom_result: StudyResult) -> None:
    first, _ = build_seg(phantom_result, UID_ROOT)
    again, _ = build_seg(phantom_result, UID_ROOT)
    other, _ = build_seg(phantom_result, "2.25.2222")
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == seg_uids(UID_ROOT)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        first.SOPInstanceUID, first.SeriesInstanceUID
    )
    assert other.SOPInstanceUID != first.SOPInstanceUID
    tracking = [str(s.TrackingUID) for s in first.SegmentSequence]
    assert tracking == [str(s.TrackingUID) for s in again.SegmentSequence]


def test_empty_lung_is_left_out_and_numbers_stay_consecutive(
    phantom_result: StudyResult,
) -> None:
    lungs = LungMask(
        left=phantom_result.lungs.left,
        right=np.zeros_like(phantom_result.lungs.right),
        method=phantom_result.lungs.method,
    )
    result = make_result(phantom_result.volume, lungs, lesions=phantom_result.lesions[:1])
    plans = plan_segments(result, UID_ROOT)
    assert [(p.number, p.kind, p.side) for p in plans] == [
        (1, "lung", "left"), (2, "lesion", "left")
    ]
    seg, _ = build_seg(result, UID_ROOT)
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]


def test_nothing_to_segment_is_refused(phantom_result: StudyResult) -> None:
    empty = np.zeros_like(phantom_result.lungs.left)
    result = make_result(phantom_result.volume, LungMask(empty, empty, "morphological-lung@1.0.0"))
    with pytest.raises(ValueError, match="no non-empty"):
        build_seg(result, UID_ROOT)


def test_code_constants_are_not_changed_by_writing(phantom_result: StudyResult) -> None:
    build_seg(phantom_result, UID_ROOT)
    assert "SegmentedPropertyTypeModifierCodeSequence" not in codes.LUNG
    assert "AnatomicRegionModifierSequence" not in codes.LUNG


@pytest.mark.slow
def test_covid_study_seg_conforms_and_matches_the_lungs(
    covid_volume: CTVolume, covid_lungs: LungMask, tmp_path: Path
) -> None:
    result = make_result(covid_volume, covid_lungs, classification=False)
    path = tmp_path / "seg.dcm"
    write_seg(result, path, UID_ROOT)
    assert dciodvfy_errors(path) == []
    labels = _read_labels(path, covid_volume)
    np.testing.assert_array_equal(labels == 1, covid_lungs.left)
    np.testing.assert_array_equal(labels == 2, covid_lungs.right)


def test_seg_lists_each_algorithm_as_contributing_equipment(
    phantom_seg: Path, phantom_result: StudyResult
) -> None:
    seg = hd.seg.segread(phantom_seg)
    items = {
        str(item.ManufacturerModelName): item for item in seg.ContributingEquipmentSequence
        if "DeviceUID" in item
    }
    lungs, localizer = lung_model(phantom_result), lesion_model(phantom_result)
    assert set(items) == {lungs.name, localizer.name}  # the classifier made no segment
    for model in (lungs, localizer):
        item = items[model.name]
        assert str(item.DeviceUID) == algorithm_device_uid(model)
        assert str(item.SoftwareVersions) == model.version
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    # The UID follows the weights: same checksum, same UID; other weights, another UID.
    other = type(localizer)(localizer.name, localizer.version, "e" * 64)
    assert algorithm_device_uid(other) != algorithm_device_uid(localizer)
    assert algorithm_device_uid(type(localizer)(**vars(localizer))) == (
        algorithm_device_uid(localizer)
    )
    anatomy = seg.SharedFunctionalGroupsSequence[0].FrameAnatomySequence[0]
    assert anatomy.FrameLaterality == "B"
