"""The burned-in Secondary Capture overlay series and its drawing helpers.

One small synthetic study (12 slices of 128 x 128: two lung ellipses, one lesion in the left
lung, an activation blob over the mediastinum and both lungs) is written once per module; the
tests read the files back and check DICOM conformance (dciodvfy), references, UIDs and pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicomnode.contracts import ResultFile
from pipeline.series import volume_from_array
from pipeline.stats import lung_stats
from pipeline.types import Classification, Lesion, LungMask, ModelInfo, StudyResult
from pipeline.writers import render
from pipeline.writers.overlay import (
    HEAT_MIN_ACTIVATION,
    LEFT_LUNG_RGB,
    LESION_CONTOUR_PX,
    LESION_OUTLINE_RGB,
    NOT_FOR_DIAGNOSTIC_USE,
    OVERLAY_KIND,
    OVERLAY_SERIES_NUMBER,
    RIGHT_LUNG_RGB,
    SECONDARY_CAPTURE_IMAGE_STORAGE,
    WARNING_RGB,
    OverlayRenderer,
    SecondaryCaptureOverlay,
    lung_slices,
    write_overlay,
)
from tests.peers.dicom3tools import dciodvfy_errors

UID_ROOT = "2.25.314159265358979"
SHAPE = (12, 128, 128)
SPACING_MM = (3.0, 1.5, 1.5)
LUNG_Z = range(1, 11)  # slices 0 and 11 have no lung
LESION_CENTRE = (6, 64, 92)  # z, y, x: inside the left lung (image right)
LESION_RADIUS_VOX = 7
BLOB_CENTRE = (6, 64, 64)  # mediastinum, between the lungs
BLOB_SIGMA_VOX = 22.0
PATIENT_ID = "OVL-0042"
ACCESSION = "ACC-77"
CLASSIFIER = ModelInfo("decovnet", "1.0.0", "ab" * 32)
LUNG_SEGMENTER = ModelInfo("morphological-lung", "1.0.0")


def _ellipse(cx: float, cy: float, ax: float, ay: float) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    return ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0


def make_result(direction: npt.NDArray[np.float64] | None = None) -> StudyResult:
    """Synthetic study: right lung on the image's left (x < 64), left lung on its right."""
    nz = SHAPE[0]
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[:, _ellipse(64, 64, 58, 44)] = 40.0
    in_range = np.zeros(nz, dtype=bool)
    in_range[list(LUNG_Z)] = True
    right = in_range[:, None, None] & _ellipse(36, 64, 18, 34)[None]
    left = in_range[:, None, None] & _ellipse(92, 64, 18, 34)[None]
    hu[right | left] = -850.0
    zz, yy, xx = np.ogrid[:nz, : SHAPE[1], : SHAPE[2]]
    cz, cy, cx = LESION_CENTRE
    lesion_mask = (
        ((zz - cz) * 2) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= LESION_RADIUS_VOX**2
    ) & left
    hu[lesion_mask] = -250.0
    bz, by, bx = BLOB_CENTRE
    activation = np.exp(
        -((yy - by) ** 2 + (xx - bx) ** 2) / (2 * BLOB_SIGMA_VOX**2) - (zz - bz) ** 2 / 8.0
    ).astype(np.float32)
    volume = volume_from_array(hu, SPACING_MM, direction=direction, uid_root="overlay-test",
                               patient_id=PATIENT_ID)
    for ds in volume.datasets:  # the source may lack type 2 attributes: written empty
        del ds.PatientName
        ds.AccessionNumber = ACCESSION
    lungs = LungMask(left=left, right=right, method=f"{LUNG_SEGMENTER.name}@1.0.0")
    areas = lesion_mask.sum(axis=(1, 2))
    lesion = Lesion(
        number=1, mask=lesion_mask, volume_ml=float(lesion_mask.sum()) * volume.voxel_volume_ml,
        centroid_lps=(0.0, 0.0, 0.0), side="left", mean_hu=-250.0, peak_activation=0.8,
        largest_slice=int(np.argmax(areas)),
    )
    classification = Classification(
        label="covid19", probabilities={"covid19": 0.83, "non-covid": 0.17}, p_covid=0.83,
        embedding=np.zeros(8, np.float32), model=CLASSIFIER, activation=activation,
    )
    return StudyResult(
        volume=volume, lungs=lungs, lung_stats=lung_stats(volume, lungs, [lesion]),
        classification=classification, lesions=(lesion,),
        algorithms=(LUNG_SEGMENTER, CLASSIFIER),
    )


@dataclass(frozen=True)
class Written:
    result: StudyResult
    files: list[ResultFile]
    headers: Sequence[Dataset]
    renderer: OverlayRenderer

    def pixels(self, index: int) -> npt.NDArray[np.uint8]:
        return np.asarray(pydicom.dcmread(self.files[index].path).pixel_array, dtype=np.uint8)

    def index_of_slice(self, z: int) -> int:
        uid = str(self.result.volume.datasets[z].SOPInstanceUID)
        for index, ds in enumerate(self.headers):
            if str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) == uid:
                return index
        raise AssertionError(f"no overlay image references slice {z}")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    result = make_result()
    files = write_overlay(result, tmp_path_factory.mktemp("overlay"), UID_ROOT)
    headers = [pydicom.dcmread(f.path, stop_before_pixels=True) for f in files]
    return Written(result, files, headers, OverlayRenderer(result))


def _is_gray(rgb: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    return (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])


def _has_color(rgb: npt.NDArray[np.uint8], color: render.RGB) -> npt.NDArray[np.bool_]:
    return np.all(rgb == np.asarray(color, dtype=np.uint8), axis=-1)


# --- the series -----------------------------------------------------------------------------


def test_one_image_per_lung_slice_then_the_summary(written: Written) -> None:
    assert len(written.files) == len(LUNG_Z) + 1
    assert all(f.path.is_file() for f in written.files)
    assert {f.kind for f in written.files} == {OVERLAY_KIND}
    assert {f.sop_class_uid for f in written.files} == {SECONDARY_CAPTURE_IMAGE_STORAGE}
    assert len({f.series_instance_uid for f in written.files}) == 1
    assert len({f.sop_instance_uid for f in written.files}) == len(written.files)
    numbers = [int(ds.InstanceNumber) for ds in written.headers]
    assert numbers == list(range(1, len(written.files) + 1))
    for ds, f in zip(written.headers, written.files, strict=True):
        assert ds.SOPInstanceUID == f.sop_instance_uid
        assert ds.SeriesInstanceUID == f.series_instance_uid


def test_every_file_passes_dciodvfy(written: Written) -> None:
    for f in written.files:
        assert dciodvfy_errors(f.path) == [], f.path.name


def test_source_image_sequence_references_the_ct_slice_in_order(written: Written) -> None:
    datasets = written.result.volume.datasets
    for ds, z in zip(written.headers[:-1], LUNG_Z, strict=True):
        (item,) = ds.SourceImageSequence
        assert item.ReferencedSOPInstanceUID == datasets[z].SOPInstanceUID
        assert item.ReferencedSOPClassUID == datasets[z].SOPClassUID
        assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert ds.DerivationDescription


def test_headers_copy_patient_and_study_and_describe_the_image(written: Written) -> None:
    source = written.result.volume.datasets[0]
    scale = written.renderer.scale
    for ds in written.headers:
        assert ds.StudyInstanceUID == written.result.volume.study_instance_uid
        assert ds.PatientID == PATIENT_ID
        assert "PatientName" in ds and ds.PatientName == ""  # absent in the source: type 2 empty
        assert ds.AccessionNumber == ACCESSION
        assert ds.StudyDate == source.StudyDate and ds.StudyTime == source.StudyTime
        assert ds.SeriesNumber == OVERLAY_SERIES_NUMBER
        assert NOT_FOR_DIAGNOSTIC_USE in ds.SeriesDescription
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.BurnedInAnnotation == "YES"
        assert ds.ConversionType == "WSD"
        assert ds.PhotometricInterpretation == "RGB"
        assert (ds.SamplesPerPixel, ds.PlanarConfiguration, ds.BitsAllocated) == (3, 0, 8)
        assert "decovnet 1.0.0" in list(ds.SoftwareVersions)
        assert "ImagePositionPatient" not in ds  # no Image Plane module in the SC IOD
    slice_header = written.headers[0]
    assert [float(v) for v in slice_header.PixelSpacing] == pytest.approx(
        [SPACING_MM[1] / scale, SPACING_MM[2] / scale]
    )
    assert list(slice_header.PatientOrientation) == ["L", "P"]
    assert (slice_header.Rows, slice_header.Columns) == (SHAPE[1] * scale, SHAPE[2] * scale)


def test_uids_are_deterministic_for_a_uid_root(written: Written, tmp_path: Path) -> None:
    again = write_overlay(written.result, tmp_path / "again", UID_ROOT)
    assert [f.sop_instance_uid for f in again] == [f.sop_instance_uid for f in written.files]
    assert again[0].series_instance_uid == written.files[0].series_instance_uid
    other = SecondaryCaptureOverlay().write(written.result, tmp_path / "other", "2.25.2718")
    assert not {f.sop_instance_uid for f in other} & {f.sop_instance_uid for f in written.files}
    assert other[0].series_instance_uid != written.files[0].series_instance_uid


# --- the pixels -----------------------------------------------------------------------------


def test_lesion_outline_and_number_on_its_largest_slice(written: Written) -> None:
    (lesion,) = written.result.lesions
    rgb = written.pixels(written.index_of_slice(lesion.largest_slice))
    scale = written.renderer.scale
    mask = render.upscale(lesion.mask[lesion.largest_slice], scale)
    boundary = render.outline(mask, LESION_CONTOUR_PX)
    is_lesion_color = _has_color(rgb, LESION_OUTLINE_RGB)
    assert boundary.sum() > 20
    assert is_lesion_color[boundary].all()
    interior = render.erode(render.erode(render.erode(mask)))
    assert not is_lesion_color[interior].any()
    # The number label: lesion-coloured pixels outside the lesion, near its top right.
    ys, xs = np.nonzero(mask)
    near = np.zeros_like(mask)
    near[max(0, ys.min() - 30) : ys.max(), xs.max() : xs.max() + 30] = True
    assert (is_lesion_color & near & ~mask).sum() >= 5


def test_lung_colours_on_the_correct_image_sides(written: Written) -> None:
    rgb = written.pixels(written.index_of_slice(LESION_CENTRE[0]))
    rows, half = rgb.shape[0], rgb.shape[1] // 2
    middle = rgb[rows // 4 : 3 * rows // 4]  # the lungs, clear of the legend's swatches
    right_cols = np.nonzero(_has_color(middle, RIGHT_LUNG_RGB))[1]
    left_cols = np.nonzero(_has_color(middle, LEFT_LUNG_RGB))[1]
    assert right_cols.size > 100 and left_cols.size > 100
    assert (right_cols < half).all()  # patient right is on the image's left (LPS)
    assert (left_cols >= half).all()
    assert written.renderer.edge_labels == ("R", "L")


def test_side_labels_follow_the_orientation() -> None:
    flipped = np.diag([-1.0, 1.0, -1.0])  # rows run towards the patient's right
    result = make_result(direction=flipped)
    renderer = OverlayRenderer(result)
    assert renderer.edge_labels == ("L", "R")
    assert renderer.patient_orientation == ["R", "P"]


def test_heat_map_only_inside_the_lungs(written: Written) -> None:
    z = BLOB_CENTRE[0]
    rgb = written.pixels(written.index_of_slice(z))
    scale = written.renderer.scale
    lungs = render.upscale(written.result.lungs.both[z], scale)
    assert written.result.classification is not None
    activation = written.result.classification.activation
    assert activation is not None
    strong = render.upscale(activation[z] > HEAT_MIN_ACTIVATION + 0.2, scale)
    # Middle band of the image: no text or legend there.
    band = np.zeros(lungs.shape, dtype=bool)
    band[lungs.shape[0] // 4 : 3 * lungs.shape[0] // 4, :] = True
    outside = band & strong & ~lungs
    assert outside.sum() > 500  # the blob does reach outside the lungs
    assert _is_gray(rgb)[outside].all()
    inside = band & strong & render.erode(render.erode(lungs))  # within the contours
    assert inside.sum() > 500
    assert (~_is_gray(rgb)[inside]).mean() > 0.95


def test_not_for_diagnostic_use_is_burned_into_the_top_band(written: Written) -> None:
    rgb = written.pixels(0)
    band_rows = written.renderer.font_px * 2
    top = rgb[:band_rows]
    assert (~_is_gray(top)).sum() > 50
    near_warning = np.abs(top.astype(int) - np.asarray(WARNING_RGB)).sum(axis=-1) < 30
    assert near_warning.sum() > 30
    plain = written.renderer.render_slice(LUNG_Z[0], annotate=False)[:band_rows]
    assert _is_gray(plain).all()  # so the colour up there is the burned-in text
    assert written.headers[0].ImageComments == NOT_FOR_DIAGNOSTIC_USE


def test_summary_image_is_last_and_references_the_largest_lesion_slice(written: Written) -> None:
    summary = written.headers[-1]
    (lesion,) = written.result.lesions
    source = written.result.volume.datasets[lesion.largest_slice]
    assert summary.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert summary.Columns == 1024 and summary.Rows >= 768
    rgb = written.pixels(len(written.files) - 1)
    assert _has_color(rgb, LESION_OUTLINE_RGB).sum() > 10  # the thumbnail's lesion outline
    near_warning = np.abs(rgb.astype(int) - np.asarray(WARNING_RGB)).sum(axis=-1) < 30
    assert near_warning.sum() > 100
    assert "PixelSpacing" not in summary


def test_without_classification_or_lesions(tmp_path: Path) -> None:
    base = make_result()
    result = replace(
        base, classification=None, lesions=(),
        lung_stats=lung_stats(base.volume, base.lungs, None), algorithms=(LUNG_SEGMENTER,),
    )
    files = write_overlay(result, tmp_path, UID_ROOT, series_number=42, every_nth_slice=3)
    assert len(files) == len(range(LUNG_Z[0], LUNG_Z[-1] + 1, 3)) + 1
    assert dciodvfy_errors(files[-1].path) == []
    first = pydicom.dcmread(files[0].path)
    assert first.SeriesNumber == 42
    rgb = np.asarray(first.pixel_array)
    middle = rgb[rgb.shape[0] // 4 : 3 * rgb.shape[0] // 4]  # clear of the legend's swatches
    assert not _has_color(middle, LESION_OUTLINE_RGB).any()
    assert _is_gray(middle[~_has_color(middle, RIGHT_LUNG_RGB) & ~_has_color(
        middle, LEFT_LUNG_RGB)]).all()  # no activation map without a classification


# --- slice choice and helpers ---------------------------------------------------------------


def test_lung_slices_thin_out_but_keep_lesion_slices() -> None:
    result = make_result()
    assert lung_slices(result) == list(LUNG_Z)
    (lesion,) = result.lesions
    every_fourth = lung_slices(result, 4)
    assert set(range(LUNG_Z[0], LUNG_Z[-1] + 1, 4)) <= set(every_fourth)
    assert lesion.largest_slice in every_fourth
    with pytest.raises(ValueError):
        lung_slices(result, 0)


def test_activation_of_another_shape_is_refused() -> None:
    result = make_result()
    assert result.classification is not None
    wrong = replace(result.classification, activation=np.zeros((2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="activation shape"):
        OverlayRenderer(replace(result, classification=wrong))


def test_outline_window_and_heat_helpers() -> None:
    square = np.zeros((8, 8), dtype=bool)
    square[2:6, 2:6] = True
    ring = render.outline(square)
    assert ring.sum() == 12 and not ring[3:5, 3:5].any()
    assert render.outline(square, 2).sum() == 16
    edge = np.ones((3, 3), dtype=bool)  # pixels on the image border are boundary pixels
    assert render.outline(edge).sum() == 8
    gray = render.window_to_gray(np.array([-2000.0, -600.0, 1000.0]), -600.0, 1500.0)
    assert gray.tolist() == [0, 128, 255]
    rgb = render.gray_to_rgb(np.full((4, 4), 100, np.uint8))
    inside = np.zeros((4, 4), dtype=bool)
    inside[:2] = True
    render.blend_heat(rgb, np.ones((4, 4), np.float32), inside, alpha_max=0.5,
                      min_activation=0.2)
    assert _is_gray(rgb)[~inside].all() and not _is_gray(rgb)[inside].any()
    assert render.orientation_label([1.0, 0.0, 0.0]) == "L"
    assert render.orientation_label([0.0, -1.0, 0.0]) == "A"
    assert render.orientation_label([0.8, 0.0, -0.6]) == "LF"
