"""Public dataset readers on tiny fake trees laid out like MosMedData and COV19-CT-DB."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from training.datasets.public import (
    COVID_LABEL,
    NON_COVID_LABEL,
    DatasetLayoutError,
    load_scan,
    normalise_label,
    read_cov19_ct_db,
    read_labelled_folder,
    read_mosmeddata,
)
from training.dicom_writer import write_series


def _write_nifti(path: Path, shape_xyz: tuple[int, int, int]) -> np.ndarray:
    data = np.arange(np.prod(shape_xyz), dtype=np.int16).reshape(shape_xyz)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])  # RAS+ with x towards the patient's right
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return data


def test_mosmeddata_layout(tmp_path: Path) -> None:
    for cat, n in (("CT-0", 2), ("CT-2", 1), ("CT-4", 1)):
        folder = tmp_path / "studies" / cat
        folder.mkdir(parents=True)
        for i in range(n):
            _write_nifti(folder / f"study_{cat}_{i}.nii.gz", (6, 5, 4))
    (tmp_path / "studies" / "README.txt").write_text("not a study")
    records = read_mosmeddata(tmp_path)
    assert len(records) == 4
    assert [r.label for r in records].count(NON_COVID_LABEL) == 2
    assert {r.category for r in records if r.label == COVID_LABEL} == {"CT-2", "CT-4"}
    loaded = load_scan(records[0])
    assert loaded.is_hu
    assert loaded.array.shape == (4, 5, 6)  # (z, y, x)
    assert loaded.spacing_mm == pytest.approx((2.5, 0.8, 0.7))


def test_nifti_orientation_maps_ras_to_dicom_axes(tmp_path: Path) -> None:
    path = tmp_path / "v.nii"
    data = _write_nifti(path, (3, 4, 5))
    from training.datasets.public import load_nifti

    arr = load_nifti(path).array
    # DICOM column 0 is the patient's right (largest RAS x index), row 0 anterior (largest y)
    assert arr[0, 0, 0] == data[2, 3, 0]
    assert arr[4, 3, 2] == data[0, 0, 4]


def test_cov19_ct_db_layout_with_jpg_and_dicom(tmp_path: Path) -> None:
    split = tmp_path / "train"
    for label in ("covid", "non-covid"):
        scan = split / label / f"ct_scan_{label}"
        scan.mkdir(parents=True)
        for k in (10, 2, 1):  # numeric, not lexical, order
            Image.fromarray(np.full((8, 8), k, dtype=np.uint8)).save(scan / f"{k}.jpg", quality=100)
    dicom_scan = split / "covid" / "ct_scan_dicom"
    write_series(np.full((10, 8, 8), -500.0, dtype=np.float32), (2.0, 0.7, 0.7), dicom_scan)
    (split / "covid" / "empty_scan").mkdir()
    records = read_cov19_ct_db(tmp_path)
    assert len(records) == 3
    by_name = {r.path.name: r for r in records}
    assert by_name["ct_scan_non-covid"].label == NON_COVID_LABEL
    assert by_name["ct_scan_dicom"].fmt == "dicom"
    slices = load_scan(by_name["ct_scan_covid"])
    assert not slices.is_hu and slices.array.shape == (3, 8, 8)
    assert [round(float(s.mean())) for s in slices.array] == [1, 2, 10]
    dicom = load_scan(by_name["ct_scan_dicom"])
    assert dicom.is_hu and float(dicom.array.mean()) == pytest.approx(-500.0)


def test_generic_csv_and_errors(tmp_path: Path) -> None:
    _write_nifti(tmp_path / "a.nii.gz", (4, 4, 3))
    _write_nifti(tmp_path / "b.nii.gz", (4, 4, 3))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\na.nii.gz,COVID-19\nb.nii.gz,normal\n")
    records = read_labelled_folder(tmp_path, csv_path)
    assert [r.label for r in records] == [COVID_LABEL, NON_COVID_LABEL]
    csv_path.write_text("file,label\na.nii.gz,covid\n")
    with pytest.raises(DatasetLayoutError):
        read_labelled_folder(tmp_path, csv_path)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetLayoutError):
        read_mosmeddata(tmp_path / "nothing")
    with pytest.raises(ValueError):
        normalise_label("influenza")
