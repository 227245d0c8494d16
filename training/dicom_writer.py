"""Write a HU volume as a valid CT Image Storage series (DICOM PS3.3 A.3), e.g. a phantom.

The node's tests send these series over the network, so the files carry every module a real CT
does: Patient, General Study, General Series, Frame of Reference, General Equipment, General
Image, Image Plane, Image Pixel, CT Image, SOP Common; plus a File Meta group (PS3.10).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

logger = logging.getLogger(__name__)

HU_OFFSET = 1024  # stored value = HU + 1024 (unsigned), RescaleIntercept = -1024
STORED_MAX = 4095  # 12 bits stored
TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "jpegls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
    "rle": RLELossless,
}


def write_series(
    volume_hu: npt.NDArray[np.floating] | npt.NDArray[np.integer],
    spacing_mm: Sequence[float],
    out_dir: Path | str,
    *,
    patient_name: str = "PHANTOM^SYNTHETIC",
    patient_id: str = "PHANTOM0001",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    series_description: str = "Synthetic chest CT phantom",
    study_description: str = "CT CHEST",
    accession_number: str = "",
    transfer_syntax: str = "explicit",
    origin_lps_mm: Sequence[float] | None = None,
) -> list[Path]:
    """Write ``volume_hu`` (z, y, x; z index 0 = most caudal) as one file per slice.

    ``spacing_mm`` is (slice spacing, row spacing, column spacing). Slices are axial, head first
    supine: ImageOrientationPatient 1\\0\\0\\0\\1\\0 and z position increasing with the index, so
    sorting by position restores the input order. InstanceNumber 1 is the most cranial slice, as
    scanners number them. ``transfer_syntax`` is one of TRANSFER_SYNTAXES (the compressed ones need
    pydicom's encoder plugins: pyjpegls, pylibjpeg-openjpeg). Returns the written paths.
    """
    vol = np.asarray(volume_hu)
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"volume must be a non-empty 3D array (z, y, x), got shape {vol.shape}")
    if len(spacing_mm) != 3 or any(float(s) <= 0 for s in spacing_mm):
        raise ValueError(f"spacing_mm must be 3 positive values, got {spacing_mm}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"unknown transfer syntax {transfer_syntax!r}; "
            f"expected one of {list(TRANSFER_SYNTAXES)}"
        )
    ts_uid = TRANSFER_SYNTAXES[transfer_syntax]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = (float(s) for s in spacing_mm)
    nz, ny, nx = vol.shape
    if origin_lps_mm is None:
        origin = (-(nx - 1) / 2.0 * dx, -(ny - 1) / 2.0 * dy, -float(nz - 1) * dz)
    else:
        if len(origin_lps_mm) != 3:
            raise ValueError(f"origin_lps_mm must be 3 values, got {origin_lps_mm}")
        origin = (float(origin_lps_mm[0]), float(origin_lps_mm[1]), float(origin_lps_mm[2]))
    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    frame_uid = frame_of_reference_uid or generate_uid()
    now = datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    stored = np.clip(np.rint(vol.astype(np.float32)) + HU_OFFSET, 0, STORED_MAX).astype(np.uint16)

    paths: list[Path] = []
    for k in range(nz):
        sop_uid = UID(generate_uid())
        ds = Dataset()
        ds.file_meta = _file_meta(sop_uid, ts_uid)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        # Patient module
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        # General Study
        ds.StudyInstanceUID = study_uid
        ds.StudyDate, ds.StudyTime = date, time
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.AccessionNumber = accession_number
        ds.StudyDescription = study_description
        # General Series
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.SeriesDate, ds.SeriesTime = date, time
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        # Frame of Reference
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        # General Equipment
        ds.Manufacturer = "chest-ct-dicomnode training (synthetic)"
        ds.ManufacturerModelName = "phantom"
        # General Image
        ds.InstanceNumber = nz - k
        ds.AcquisitionNumber = 1
        ds.ContentDate, ds.ContentTime = date, time
        # Image Plane
        ds.PixelSpacing = [_ds(dy), _ds(dx)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        z_mm = origin[2] + k * dz
        ds.ImagePositionPatient = [_ds(origin[0]), _ds(origin[1]), _ds(z_mm)]
        ds.SliceThickness = _ds(dz)
        ds.SliceLocation = _ds(z_mm)
        # Image Pixel
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        # CT Image
        ds.RescaleIntercept = -HU_OFFSET
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        pixels = np.ascontiguousarray(stored[k])
        if ts_uid == ExplicitVRLittleEndian:
            ds.PixelData = pixels.tobytes()
        else:
            ds.compress(ts_uid, pixels)
        path = out / f"CT{k + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    logger.info("wrote %d CT slices series=%s ts=%s to %s", nz, series_uid, ts_uid.name, out)
    return paths


def _file_meta(sop_uid: UID, ts_uid: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ts_uid
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _ds(value: float) -> str:
    """Format a float as a DICOM Decimal String (at most 16 characters)."""
    text = f"{value:.6g}"
    return text if len(text) <= 16 else f"{value:.8e}"[:16]
