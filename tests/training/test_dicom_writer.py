"""DICOM writer: valid CT Image Storage files that pydicom and pipeline.series read back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGLSLossless

from pipeline.series import read_series
from training.dicom_writer import write_series
from training.synthetic import generate_case


@pytest.fixture(scope="module")
def small_case():
    return generate_case(21, kind="covid", matrix=64, slice_spacing_mm=5.0)


def test_round_trip_pydicom_and_read_series(tmp_path: Path, small_case) -> None:
    paths = write_series(small_case.hu, small_case.spacing_mm, tmp_path, patient_id="P1")
    assert len(paths) == small_case.hu.shape[0]
    first = pydicom.dcmread(paths[0])
    assert first.SOPClassUID == CTImageStorage
    assert first.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
                    "SOPInstanceUID"):
        uid = pydicom.uid.UID(str(first.data_element(keyword).value))
        assert uid.is_valid, keyword
    assert first.InstanceNumber == len(paths)  # slice 0 is caudal, instance 1 is cranial
    assert float(first.SliceThickness) == pytest.approx(small_case.spacing_mm[0])
    volume = read_series(paths)
    assert volume.shape == small_case.hu.shape
    np.testing.assert_allclose(volume.spacing_mm, small_case.spacing_mm, rtol=1e-4)
    expected = np.clip(np.rint(small_case.hu), -1024, 3071)
    np.testing.assert_array_equal(volume.hu, expected)


def test_jpegls_lossless(tmp_path: Path, small_case) -> None:
    paths = write_series(small_case.hu[:3], small_case.spacing_mm, tmp_path,
                         transfer_syntax="jpegls")
    ds = pydicom.dcmread(paths[1])
    assert ds.file_meta.TransferSyntaxUID == JPEGLSLossless
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(hu, np.clip(np.rint(small_case.hu[1]), -1024, 3071))


def test_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_series(np.zeros((4, 4)), (1, 1, 1), tmp_path)
    with pytest.raises(ValueError):
        write_series(np.zeros((2, 4, 4)), (1, 0, 1), tmp_path)
    with pytest.raises(ValueError):
        write_series(np.zeros((2, 4, 4)), (1, 1, 1), tmp_path, transfer_syntax="mpeg")
