"""Companion viewer SR (lesion outlines) and the outline polygons it is made of.

Checks what OHIF needs (every measurement group has image coordinates, the first NUM carries
the SCOORD, Cornerstone tracking identifier), what the standard needs (dciodvfy, srread) and
that the outline is the lesion's: on its largest slice, inside the image, around its centre.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import Comprehensive3DSRStorage
from skimage.measure import points_in_poly

from dicomnode.contracts import PriorReport
from pipeline.runner import VIEWER_SR_FILE_NAME, write_results
from pipeline.types import StudyResult
from pipeline.writers import codes
from pipeline.writers.contours import OUTLINE_MAX_POINTS, outline, polygon_area_px
from pipeline.writers.seg import SegmentPlan, write_seg
from pipeline.writers.viewer_sr import (
    CORNERSTONE_FREEHAND_TRACKING_ID,
    VIEWER_SR_SERIES_DESCRIPTION,
    VIEWER_SR_SERIES_NUMBER,
    build_viewer_sr,
    lesion_label,
    lesion_outline,
    viewer_sr_uids,
    write_viewer_sr,
)
from tests.peers.dicom3tools import dciodvfy_errors
from tests.pipeline.conftest import dsrdump_text, make_result

UID_ROOT = "2.25.4444"
POLYGON_AREA_TOLERANCE = 0.10  # outline area vs voxel-count area of a ~12 mm lesion slice


@pytest.fixture(scope="module")
def written(
    phantom_result: StudyResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[hd.seg.Segmentation, tuple[SegmentPlan, ...], Path, PriorReport]:
    folder = tmp_path_factory.mktemp("viewer-sr")
    seg, plans = write_seg(phantom_result, folder / "seg.dcm", UID_ROOT)
    prior = PriorReport(
        study_instance_uid=phantom_result.volume.study_instance_uid,
        series_instance_uid="2.25.81",
        sop_instance_uid="2.25.82",
        sop_class_uid=Comprehensive3DSRStorage,
    )
    path = folder / VIEWER_SR_FILE_NAME
    assert write_viewer_sr(phantom_result, plans, path, UID_ROOT, [prior]) is not None
    return seg, plans, path, prior


def _groups(sr: Any) -> list[Any]:
    return hd.sr.utils.find_content_items(
        sr.content[0], name=dicom_codes.DCM.MeasurementGroup, recursive=True
    )


def _text(group: Any, name: object) -> str:
    values = [str(item.value) for item in group.ContentSequence if item.name == name]
    assert len(values) == 1, values
    return values[0]


def _nums(group: Any) -> list[Any]:
    return [item for item in group.ContentSequence if item.ValueType == "NUM"]


def _scoords(item: Any) -> list[Any]:
    return [child for child in item.get("ContentSequence", []) if child.ValueType == "SCOORD"]


def _walk(item: Any) -> list[Any]:
    found = [item]
    for child in item.get("ContentSequence", []):
        found.extend(_walk(child))
    return found


def _value(num: Any) -> float:
    return float(num.MeasuredValueSequence[0].NumericValue)


def test_viewer_sr_passes_dciodvfy_reads_back_and_renders(
    written: tuple[Any, Any, Path, PriorReport], phantom_result: StudyResult
) -> None:
    _, _, path, prior = written
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) == viewer_sr_uids(UID_ROOT)
    assert int(sr.SeriesNumber) == VIEWER_SR_SERIES_NUMBER
    assert sr.SeriesDescription == VIEWER_SR_SERIES_DESCRIPTION
    assert sr.StudyInstanceUID == phantom_result.volume.study_instance_uid
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    series = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == prior.sop_instance_uid
    text = dsrdump_text(path)
    assert "Imaging Measurement Report" in text and "POLYLINE" in text


def test_one_group_per_lesion_tracked_like_its_seg_segment(
    written: tuple[hd.seg.Segmentation, tuple[SegmentPlan, ...], Path, Any],
) -> None:
    seg, plans, path, _ = written
    groups = _groups(hd.sr.srread(path))
    lesion_plans = [plan for plan in plans if plan.kind == "lesion"]
    assert len(groups) == len(lesion_plans) == 2
    segment_uids = {
        str(s.SegmentLabel): str(s.TrackingUID) for s in seg.SegmentSequence
    }
    for group, plan in zip(groups, lesion_plans, strict=True):
        assert _text(group, dicom_codes.DCM.TrackingIdentifier) == CORNERSTONE_FREEHAND_TRACKING_ID
        uid = _text(group, dicom_codes.DCM.TrackingUniqueIdentifier)
        assert uid == plan.tracking_uid == segment_uids[plan.label]
        finding = [i for i in group.ContentSequence if i.name == dicom_codes.DCM.Finding]
        assert finding[0].value == codes.LESION
        site = [i for i in group.ContentSequence if i.name == dicom_codes.SCT.FindingSite][0]
        assert site.value == codes.LUNG
        assert site.ContentSequence[0].value in (codes.LEFT, codes.RIGHT, codes.BILATERAL)


def test_each_group_is_named_like_its_segment_with_side_and_volume(
    written: tuple[hd.seg.Segmentation, tuple[SegmentPlan, ...], Path, Any],
    phantom_result: StudyResult,
) -> None:
    _, plans, path, _ = written
    lesions = {lesion.number: lesion for lesion in phantom_result.lesions}
    names = []
    for group, plan in zip(_groups(hd.sr.srread(path)), [p for p in plans if p.kind == "lesion"],
                           strict=True):
        name = _text(group, codes.COMMENT)
        lesion = lesions[plan.lesion_number]
        assert name == lesion_label(lesion)
        assert name.startswith(f"{plan.label} (") and f"{lesion.volume_ml:.1f} mL" in name
        assert f"{lesion.side} lung" in name or "both lungs" in name
        names.append(name)
    assert len(set(names)) == len(names)


def test_every_group_draws_and_carries_no_volumetric_reference(
    written: tuple[Any, Any, Path, Any],
) -> None:
    sr = hd.sr.srread(written[2])
    groups = _groups(sr)
    assert groups
    for group in groups:
        assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
        items = _walk(group)
        assert any(item.ValueType == "SCOORD" for item in items)
        assert not any(item.ValueType == "SCOORD3D" for item in items)
        assert not any(item.name == dicom_codes.DCM.ReferencedSegment for item in items)
        # OHIF takes the drawing from the first NUM's SCOORD, which selects one CT image.
        first = _nums(group)[0]
        assert first.name == codes.AREA
        [scoord] = _scoords(first)
        assert scoord.RelationshipType == "INFERRED FROM"
        assert scoord.GraphicType == "POLYLINE"
        [image] = scoord.ContentSequence
        assert image.ValueType == "IMAGE" and image.RelationshipType == "SELECTED FROM"
        # No group-level SCOORD (TID 1410 style), which OHIF can draw but not load.
        assert not any(item.ValueType == "SCOORD" for item in group.ContentSequence)


def test_outlines_lie_on_the_largest_slice_and_enclose_the_lesion(
    written: tuple[Any, Any, Path, Any], phantom_result: StudyResult
) -> None:
    sr = hd.sr.srread(written[2])
    volume = phantom_result.volume
    z_by_uid = {str(ds.SOPInstanceUID): z for z, ds in enumerate(volume.datasets)}
    _, row_mm, column_mm = volume.spacing_mm
    for group, lesion in zip(_groups(sr), phantom_result.lesions, strict=True):
        area_num = _nums(group)[0]
        [scoord] = _scoords(area_num)
        image = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        z = z_by_uid[str(image.ReferencedSOPInstanceUID)]
        assert z == lesion.largest_slice
        assert int(np.argmax(lesion.mask.sum(axis=(1, 2)))) == z
        assert image.ReferencedSOPClassUID == volume.datasets[z].SOPClassUID
        points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)
        assert 4 <= len(points) <= OUTLINE_MAX_POINTS
        assert np.array_equal(points[0], points[-1])  # closed
        rows, columns = int(volume.datasets[z].Rows), int(volume.datasets[z].Columns)
        assert points[:, 0].min() >= 0.0 and points[:, 0].max() <= columns
        assert points[:, 1].min() >= 0.0 and points[:, 1].max() <= rows
        plane = lesion.mask[z]
        centre_row, centre_column = np.argwhere(plane).mean(axis=0)
        centre = np.array([[centre_column + 0.5, centre_row + 0.5]])
        assert points_in_poly(centre, points)[0]
        # Every lesion pixel centre of that slice is inside the outline (one region here).
        pixel_centres = np.argwhere(plane)[:, ::-1] + 0.5
        assert points_in_poly(pixel_centres, points).all()
        assert polygon_area_px(points) == pytest.approx(
            int(plane.sum()), rel=POLYGON_AREA_TOLERANCE
        )
        assert _value(area_num) == pytest.approx(plane.sum() * row_mm * column_mm, abs=1e-3)
        mean = [n for n in _nums(group) if n.name == codes.ATTENUATION_COEFFICIENT][0]
        assert _value(mean) == pytest.approx(float(volume.hu[z][plane].mean()), abs=0.01)
        assert _scoords(mean)  # drawn on the same outline
        volume_num = [n for n in _nums(group) if n.name == codes.VOLUME][0]
        assert _value(volume_num) == pytest.approx(lesion.volume_ml, abs=1e-3)
        assert not _scoords(volume_num)  # a 3D measurement, not inferred from the outline


def test_outline_maps_to_the_lesion_in_patient_space(
    written: tuple[Any, Any, Path, Any], phantom_result: StudyResult
) -> None:
    """The SCOORD convention (pixel centre at +0.5) puts the outline around the lesion's
    in-slice centroid in LPS, within a pixel."""
    sr = hd.sr.srread(written[2])
    volume = phantom_result.volume
    for group, lesion in zip(_groups(sr), phantom_result.lesions, strict=True):
        [scoord] = _scoords(_nums(group)[0])
        points = np.asarray(scoord.GraphicData, dtype=np.float64).reshape(-1, 2)[:-1]
        ds = volume.datasets[lesion.largest_slice]
        to_lps = hd.spatial.ImageToReferenceTransformer(
            image_position=[float(v) for v in ds.ImagePositionPatient],
            image_orientation=[float(v) for v in ds.ImageOrientationPatient],
            pixel_spacing=[float(v) for v in ds.PixelSpacing],
        )
        plane = lesion.mask[lesion.largest_slice]
        row, column = np.argwhere(plane).mean(axis=0)
        truth = volume.index_to_lps([[lesion.largest_slice, row, column]])[0]
        lps = to_lps(points)
        # A polygon's vertex mean is not its area centroid; a round outline keeps them close.
        assert np.linalg.norm(lps.mean(axis=0) - truth) < 2 * max(volume.spacing_mm[1:])


def test_groups_identify_the_localizer_with_its_weights_checksum(
    written: tuple[Any, Any, Path, Any], phantom_result: StudyResult
) -> None:
    localizer = phantom_result.algorithms[-1]
    assert localizer.sha256
    for group in _groups(hd.sr.srread(written[2])):
        assert _text(group, dicom_codes.DCM.AlgorithmName) == localizer.name
        assert _text(group, dicom_codes.DCM.AlgorithmVersion) == localizer.version
        assert _text(group, dicom_codes.DCM.AlgorithmParameters) == f"sha256={localizer.sha256}"


def test_classification_goes_into_each_group_not_into_a_group_of_its_own(
    written: tuple[Any, Any, Path, Any], phantom_result: StudyResult
) -> None:
    sr = hd.sr.srread(written[2])
    assert phantom_result.classification is not None
    predicted = codes.class_code(phantom_result.classification.label)
    groups = _groups(sr)
    assert len(groups) == len(phantom_result.lesions)
    for group in groups:
        evaluations = [i for i in group.ContentSequence if i.name == predicted]
        assert len(evaluations) == 1 and evaluations[0].value == codes.PRESENT
        assert not [n for n in _nums(group) if n.name == codes.PROBABILITY]


def test_uids_are_deterministic(
    written: tuple[Any, tuple[SegmentPlan, ...], Path, Any], phantom_result: StudyResult
) -> None:
    _, plans, path, _ = written
    again = build_viewer_sr(phantom_result, plans, UID_ROOT)
    other = build_viewer_sr(phantom_result, plans, "2.25.4445")
    assert again is not None and other is not None
    first = pydicom.dcmread(path, stop_before_pixels=True)
    assert (again.SOPInstanceUID, again.SeriesInstanceUID) == (
        first.SOPInstanceUID, first.SeriesInstanceUID
    )
    assert again.SOPInstanceUID != other.SOPInstanceUID
    assert again.SeriesInstanceUID != other.SeriesInstanceUID


def test_without_lesions_no_viewer_sr_is_written(
    phantom_result: StudyResult, tmp_path: Path
) -> None:
    result = make_result(phantom_result.volume, phantom_result.lungs, classification=True)
    seg, plans = write_seg(result, tmp_path / "seg.dcm", UID_ROOT)
    assert write_viewer_sr(result, plans, tmp_path / "v.dcm", UID_ROOT) is None
    assert not (tmp_path / "v.dcm").exists()
    written = write_results(result, tmp_path / "out", UID_ROOT)
    assert [obj.kind for obj in written] == ["SEG", "SR"]
    assert not (tmp_path / "out" / VIEWER_SR_FILE_NAME).exists()


def test_write_results_adds_the_viewer_sr_as_a_second_sr(
    phantom_result: StudyResult, tmp_path: Path
) -> None:
    written = write_results(phantom_result, tmp_path, UID_ROOT)
    assert [obj.kind for obj in written] == ["SEG", "SR", "SR"]
    viewer = written[2]
    assert viewer.path == tmp_path / VIEWER_SR_FILE_NAME
    assert (viewer.sop_instance_uid, viewer.series_instance_uid) == viewer_sr_uids(UID_ROOT)[::-1]
    assert viewer.series_instance_uid != written[1].series_instance_uid
    assert dciodvfy_errors(viewer.path) == []


def test_a_stale_largest_slice_falls_back_to_where_the_lesion_is(
    phantom_result: StudyResult,
) -> None:
    lesion = phantom_result.lesions[0]
    empty_z = int(np.flatnonzero(~lesion.mask.any(axis=(1, 2)))[0])
    drawn = lesion_outline(phantom_result, replace(lesion, largest_slice=empty_z))
    assert drawn.slice_index == lesion.largest_slice
    assert drawn.source is phantom_result.volume.datasets[lesion.largest_slice]
    with pytest.raises(ValueError, match="empty mask"):
        lesion_outline(phantom_result, replace(lesion, mask=np.zeros_like(lesion.mask)))


# --- outline polygons --------------------------------------------------------------------


def test_outline_of_a_rectangle_runs_along_its_pixel_edges() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:7] = True  # rows 2..4, columns 3..6
    points = outline(mask)
    assert np.array_equal(points[0], points[-1])
    # Image coordinates: pixel (r, c) spans [c, c+1] x [r, r+1]; straight edges are exact.
    assert points[:, 0].min() == 3.0 and points[:, 0].max() == 7.0
    assert points[:, 1].min() == 2.0 and points[:, 1].max() == 5.0
    assert polygon_area_px(points) == pytest.approx(12.0, abs=0.5)  # 4 corners cut by 1/8


def test_outline_at_the_image_edge_stays_inside_the_image() -> None:
    mask = np.zeros((8, 8), dtype=bool)
    mask[0:3, 5:8] = True
    points = outline(mask)
    assert points[:, 0].min() >= 0.0 and points[:, 0].max() == 8.0
    assert points[:, 1].min() == 0.0 and points[:, 1].max() <= 8.0


def test_outline_of_one_pixel_and_of_the_larger_of_two_regions() -> None:
    single = np.zeros((5, 5), dtype=bool)
    single[2, 3] = True
    points = outline(single)
    assert len(np.unique(points, axis=0)) >= 3
    assert points_in_poly(np.array([[3.5, 2.5]]), points)[0]
    two = np.zeros((30, 30), dtype=bool)
    two[1:3, 1:3] = True
    two[10:20, 12:25] = True
    points = outline(two)
    assert points[:, 0].min() == 12.0 and points[:, 1].min() == 10.0


def test_outline_is_simplified_to_at_most_max_points() -> None:
    rows, columns = np.mgrid[:256, :256]
    angle = np.arctan2(rows - 128.0, columns - 128.0)
    radius = 90.0 + 25.0 * np.sin(17 * angle)  # a wavy blob with a long outline
    blob = np.hypot(rows - 128.0, columns - 128.0) <= radius
    points = outline(blob, max_points=40)
    assert 4 <= len(points) <= 40
    assert np.array_equal(points[0], points[-1])
    assert polygon_area_px(points) == pytest.approx(int(blob.sum()), rel=0.15)
    with pytest.raises(ValueError, match="empty"):
        outline(np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="2D"):
        outline(np.ones((2, 2, 2), dtype=bool))
