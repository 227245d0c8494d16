"""read_series: real studies (JPEG Lossless, JPEG 2000), synthetic stacks in every lossless
transfer syntax, and every refusal (orientation, missing slice, mixed series, spacing)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from pipeline.errors import SeriesError
from pipeline.series import read_series, volume_from_array, volume_from_datasets
from pipeline.types import CTVolume
from pipeline.uid_repair import repair_uids
from pipeline.writers.uids import is_valid_uid
from tests.pipeline.conftest import read_header, slice_datasets, write_datasets

SLICES = 12
ROWS, COLS = 48, 40  # JPEG 2000 needs at least 32 pixels per side (5 decompositions)


def _ramp_hu() -> np.ndarray:
    """A volume whose every voxel value encodes its (z, y, x) index, so order errors show."""
    z, y, x = np.meshgrid(np.arange(SLICES), np.arange(ROWS), np.arange(COLS), indexing="ij")
    return (z * 100 + y * 3 + x - 1000).astype(np.float32)


def _positions_along_normal(volume: CTVolume) -> np.ndarray:
    normal = volume.direction[:, 2]
    return np.array([np.asarray(ds.ImagePositionPatient, dtype=float) @ normal
                     for ds in volume.datasets])


# --- real data -------------------------------------------------------------------------------


@pytest.mark.slow
def test_covid_study_reads_as_a_sorted_hu_volume(covid_volume: CTVolume) -> None:
    assert covid_volume.shape == (133, 512, 512)
    assert covid_volume.hu.dtype == np.float32
    assert covid_volume.spacing_mm[0] == pytest.approx(2.0, abs=1e-6)
    assert covid_volume.spacing_mm[1:] == pytest.approx((0.603515625, 0.603515625))
    # Air near -1000 HU, dense bone well above +1000 HU (slope 1, intercept -1024 applied).
    assert covid_volume.hu.min() == pytest.approx(-1024.0)
    assert 1000.0 < covid_volume.hu.max() < 3100.0
    assert np.median(covid_volume.hu[:, :20, :20]) < -900.0
    positions = _positions_along_normal(covid_volume)
    assert np.all(np.diff(positions) == pytest.approx(2.0, abs=1e-3))
    assert covid_volume.origin_lps == pytest.approx(
        [float(v) for v in covid_volume.datasets[0].ImagePositionPatient]
    )
    np.testing.assert_allclose(covid_volume.direction, np.eye(3), atol=1e-9)
    assert all("PixelData" not in ds for ds in covid_volume.datasets)


@pytest.mark.slow
def test_covid_study_uids_are_repaired_deterministically(
    covid_volume: CTVolume, covid_files: list[Path]
) -> None:
    raw = read_header(covid_files[0])
    # The export has a UUID string as Study Instance UID: it becomes 2.25.<int(uuid)>.
    assert covid_volume.study_instance_uid == f"2.25.{uuid.UUID(str(raw.StudyInstanceUID)).int}"
    for uid in (
        covid_volume.study_instance_uid,
        covid_volume.series_instance_uid,
        covid_volume.frame_of_reference_uid,
    ):
        assert is_valid_uid(uid)
    sop_uids = [str(ds.SOPInstanceUID) for ds in covid_volume.datasets]
    assert len(set(sop_uids)) == len(sop_uids) and all(is_valid_uid(u) for u in sop_uids)
    headers = [read_header(path) for path in covid_files]
    assert repair_uids(headers) > 0
    by_instance = {int(ds.InstanceNumber): str(ds.SOPInstanceUID) for ds in headers}
    assert {int(ds.InstanceNumber): str(ds.SOPInstanceUID)
            for ds in covid_volume.datasets} == by_instance
    assert repair_uids(headers) == 0  # idempotent


@pytest.mark.slow
def test_cap_study_reads(cap_volume: CTVolume) -> None:
    assert cap_volume.shape == (131, 512, 512)
    assert cap_volume.spacing_mm == pytest.approx((2.0, 0.630859375, 0.630859375))
    assert np.all(np.diff(_positions_along_normal(cap_volume)) > 0)


def test_covid_study_reads_without_repair_keeping_the_raw_uids(covid_files: list[Path]) -> None:
    volume = read_series(covid_files[40:60])
    assert volume.shape == (20, 512, 512)
    assert volume.frame_of_reference_uid == ""
    assert not is_valid_uid(volume.series_instance_uid)


def test_jpeg2000_series_spacing_comes_from_positions(totalseg_files: list[Path]) -> None:
    volume = read_series(totalseg_files, repair_uids=True)
    assert volume.shape == (20, 512, 512)
    assert float(volume.datasets[0].SliceThickness) == 3.0
    assert volume.spacing_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.hu.min() >= -1100.0 and volume.hu.max() > 500.0
    # Empty SOP Class / Instance UIDs come back from the file meta.
    assert all(is_valid_uid(str(ds.SOPInstanceUID)) for ds in volume.datasets)
    assert str(volume.datasets[0].SOPClassUID) == pydicom.uid.CTImageStorage


# --- synthetic stacks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "syntax",
    [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless, JPEGLSLossless,
     JPEG2000Lossless],
)
def test_every_lossless_transfer_syntax_gives_the_same_volume(tmp_path: Path, syntax: UID) -> None:
    hu = _ramp_hu()
    datasets = slice_datasets(hu)
    for ds in datasets:
        if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
    volume = read_series(write_datasets(datasets, tmp_path))
    assert str(pydicom.dcmread(tmp_path / "IM0001.dcm").file_meta.TransferSyntaxUID) == syntax
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm == pytest.approx((2.0, 0.8, 0.8))


def test_slices_are_sorted_along_the_normal_even_when_it_points_to_the_feet(
    tmp_path: Path,
) -> None:
    hu = _ramp_hu()
    feet_first = np.array([[-1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]])
    paths = write_datasets(slice_datasets(hu, direction=feet_first), tmp_path)
    volume = read_series(sorted(paths)[::-1])
    np.testing.assert_array_equal(volume.hu, hu)
    np.testing.assert_allclose(volume.direction, feet_first)
    z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert z == sorted(z, reverse=True)
    # The voxel at (z=1, y=0, x=0) lies one slice towards the feet of the origin.
    assert volume.index_to_lps([1, 0, 0])[0] == pytest.approx(
        np.asarray(volume.origin_lps) + [0, 0, -2.0]
    )


def test_rescale_slope_and_intercept_apply_per_slice() -> None:
    hu = _ramp_hu()
    datasets = slice_datasets(hu)
    ds = datasets[3]
    stored = np.round((hu[3] + 2048.0) / 2.0).astype(np.uint16)
    ds.RescaleSlope, ds.RescaleIntercept, ds.PixelData = 2, -2048, stored.tobytes()
    volume = volume_from_datasets(datasets)
    np.testing.assert_allclose(volume.hu[3], stored * 2.0 - 2048.0)
    np.testing.assert_array_equal(volume.hu[4], hu[4])


def test_a_repeated_position_is_dropped() -> None:
    hu = _ramp_hu()
    datasets = slice_datasets(hu)
    duplicate = slice_datasets(hu, uid_root="series-test")[5]
    duplicate.SOPInstanceUID = "1.2.3.4.5"
    duplicate.InstanceNumber = 99
    volume = volume_from_datasets([*datasets, duplicate])
    assert volume.shape[0] == SLICES
    assert "1.2.3.4.5" not in {str(ds.SOPInstanceUID) for ds in volume.datasets}


def test_a_second_phase_in_the_series_is_refused() -> None:
    datasets = slice_datasets(_ramp_hu())
    phase = slice_datasets(_ramp_hu(), uid_root="series-test")
    for index, ds in enumerate(phase):
        ds.SOPInstanceUID = f"1.2.3.4.{index + 1}"
        ds.InstanceNumber = 100 + index
    with pytest.raises(SeriesError, match="duplicate slice positions"):
        volume_from_datasets([*datasets, *phase])


def test_non_dicom_files_and_non_ct_objects_are_skipped(tmp_path: Path) -> None:
    paths = write_datasets(slice_datasets(_ramp_hu()), tmp_path / "ct")
    (tmp_path / "notes.txt").write_text("not DICOM")
    localizer = slice_datasets(_ramp_hu(), uid_root="series-test")[0]
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    localizer.SOPInstanceUID = "1.2.3.9"
    extra = write_datasets([localizer], tmp_path / "scout")
    volume = read_series([*paths, tmp_path / "notes.txt", *extra])
    assert volume.shape == (SLICES, ROWS, COLS)


def test_inconsistent_orientation_is_refused() -> None:
    datasets = slice_datasets(_ramp_hu())
    datasets[4].ImageOrientationPatient = [1, 0, 0, 0, 0.9, 0.43589]
    with pytest.raises(SeriesError, match="inconsistent ImageOrientationPatient"):
        volume_from_datasets(datasets)


def test_missing_slice_is_refused_with_its_position() -> None:
    datasets = slice_datasets(_ramp_hu())
    del datasets[6]
    with pytest.raises(SeriesError, match=r"1 slice\(s\) missing between positions 10.00 mm"):
        volume_from_datasets(datasets)


def test_irregular_spacing_is_refused() -> None:
    datasets = slice_datasets(_ramp_hu())
    for ds in datasets[7:]:
        ds.ImagePositionPatient = [0.0, 0.0, float(ds.ImagePositionPatient[2]) + 0.7]
    with pytest.raises(SeriesError, match="irregular slice spacing"):
        volume_from_datasets(datasets)


def test_mixed_series_are_refused_unless_one_is_chosen() -> None:
    first = slice_datasets(_ramp_hu(), uid_root="series-a")
    second = slice_datasets(_ramp_hu() + np.float32(5.0), uid_root="series-b")
    with pytest.raises(SeriesError, match="files hold 2 CT series"):
        volume_from_datasets([*first, *second])
    chosen = volume_from_datasets(
        [*slice_datasets(_ramp_hu(), uid_root="series-a"), *second],
        series_instance_uid=str(second[0].SeriesInstanceUID),
    )
    np.testing.assert_array_equal(chosen.hu, _ramp_hu() + np.float32(5.0))


def test_inconsistent_matrix_and_pixel_spacing_are_refused() -> None:
    datasets = slice_datasets(_ramp_hu())
    datasets[2].PixelSpacing = [0.9, 0.8]
    with pytest.raises(SeriesError, match="inconsistent PixelSpacing"):
        volume_from_datasets(datasets)


def test_sheared_stack_is_refused() -> None:
    datasets = slice_datasets(_ramp_hu())
    for index, ds in enumerate(datasets):
        ds.ImagePositionPatient = [0.0, 0.5 * index, 2.0 * index]
    with pytest.raises(SeriesError, match="drift"):
        volume_from_datasets(datasets)


def test_too_few_slices_are_refused() -> None:
    with pytest.raises(SeriesError, match="at least 10 needed"):
        volume_from_datasets(slice_datasets(_ramp_hu()[:5]))
    assert volume_from_datasets(slice_datasets(_ramp_hu()[:5]), min_slices=5).shape[0] == 5


def test_no_ct_image_is_refused() -> None:
    with pytest.raises(SeriesError, match="no CT image"):
        volume_from_datasets([])


def test_repair_uids_maps_uuid_strings_and_fills_empty_ones() -> None:
    datasets = slice_datasets(_ramp_hu())
    for ds in datasets:
        ds.StudyInstanceUID = "896911bf-1143-4c8d-8f04-f3cd1a7f6204"
        ds.SeriesInstanceUID = ""
        ds.FrameOfReferenceUID = ""
        ds.SOPInstanceUID = ""
        del ds.file_meta.MediaStorageSOPInstanceUID
    volume = volume_from_datasets(datasets, repair_uids=True)
    assert volume.study_instance_uid == "2.25.182649786531564538499729245561820242436"
    assert is_valid_uid(volume.series_instance_uid)
    assert is_valid_uid(volume.frame_of_reference_uid)
    again = slice_datasets(_ramp_hu())
    for ds in again:
        ds.StudyInstanceUID = "896911bf-1143-4c8d-8f04-f3cd1a7f6204"
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID = "", "", ""
        del ds.file_meta.MediaStorageSOPInstanceUID
    repeated = volume_from_datasets(again, repair_uids=True)
    assert [str(ds.SOPInstanceUID) for ds in repeated.datasets] == [
        str(ds.SOPInstanceUID) for ds in volume.datasets
    ]
    assert repeated.series_instance_uid == volume.series_instance_uid


def test_a_file_meta_uid_repeated_across_files_is_not_trusted() -> None:
    datasets = slice_datasets(_ramp_hu())
    placeholder = "1.2.3.4.5.6.7"
    for ds in datasets:
        ds.SOPInstanceUID = ""
        ds.file_meta.MediaStorageSOPInstanceUID = placeholder
    volume = volume_from_datasets(datasets, repair_uids=True)
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    assert len(set(uids)) == len(uids) and placeholder not in uids
    assert all(is_valid_uid(uid) for uid in uids)


def test_normal002_with_one_placeholder_file_meta_uid_reads(shared_data: Path) -> None:
    folder = shared_data / "covid-ct-md" / "series" / "Normal" / "normal002"
    files = sorted(folder.glob("*.dcm"))
    metas = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.get(
        "MediaStorageSOPInstanceUID", "")) for f in files[:3]}
    assert len(files) == 167 and len(metas) == 1  # the export's defect is still there
    volume = read_series(files, repair_uids=True)
    uids = {str(ds.SOPInstanceUID) for ds in volume.datasets}
    assert len(uids) == volume.hu.shape[0] == 167


def test_volume_from_array_geometry() -> None:
    volume = volume_from_array(np.zeros((3, 4, 5)), (2.5, 0.5, 0.75), (10.0, 20.0, 30.0))
    assert volume.index_to_lps([2, 3, 4])[0] == pytest.approx([10.0 + 3.0, 20.0 + 1.5, 35.0])
    assert volume.voxel_volume_ml == pytest.approx(2.5 * 0.5 * 0.75 / 1000.0)
    assert len(volume.datasets) == 3
    assert [float(v) for v in volume.datasets[2].ImagePositionPatient] == [10.0, 20.0, 35.0]
    with pytest.raises(ValueError):
        volume_from_array(np.zeros((3, 4)))
