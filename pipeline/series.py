"""Turn the DICOM files of one CT series into a ``CTVolume`` (HU, LPS geometry, headers).

``read_series`` accepts any transfer syntax pydicom can decode through its plug-ins
(pylibjpeg, pyjpegls, gdcm), keeps the CT images, sorts them along the slice normal and
refuses series whose geometry is not a regular stack (mixed orientations, a missing slice,
sheared positions) with a ``SeriesError`` that says exactly what is wrong. The stack rules are
the node's own (``dicomnode.contracts.stack``), so a series the node chose is one read here.
The returned headers keep every attribute except Pixel Data, which is released after decoding.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from dicomnode.contracts.stack import SliceGeometry, Stack, StackError, check_stack
from pipeline.errors import SeriesError
from pipeline.geometry import direction_matrix, orientation_axes, orientation_of
from pipeline.pixel_decode import stored_pixels
from pipeline.types import CTVolume
from pipeline.uid_repair import repair_uids as repair_series_uids
from pipeline.writers.uids import derive_uid

logger = logging.getLogger(__name__)

DEFAULT_MIN_SLICES = 10
DEFAULT_SPACING_TOLERANCE = 0.1  # allowed relative deviation of a slice gap from the median
MAX_MATRIX = 4096  # a CT slice is 512 x 512; larger matrices are refused before any allocation
MAX_VOXELS = 2**31  # 8 GiB of float32 HU: far past any chest CT
CT_SOP_CLASS_UIDS = frozenset({CTImageStorage})


def read_series(
    files: Iterable[Path | str],
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
    series_instance_uid: str | None = None,
    repair_uids: bool = False,
) -> CTVolume:
    """Read DICOM files, keep the CT images of one series and build its volume.

    Files that are not DICOM, or DICOM objects that are not CT images (SR, SEG, localizers),
    are skipped with a log line. When the CT images belong to several series, pass
    ``series_instance_uid`` to choose one, otherwise a ``SeriesError`` lists them.
    ``repair_uids`` replaces missing or malformed UIDs by deterministic valid ones (see
    :func:`pipeline.uid_repair.repair_uids`), for offline analysis of defective exports.
    """
    started = time.perf_counter()
    datasets: list[Dataset] = []
    unreadable = 0
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path))
        except (InvalidDicomError, OSError, EOFError) as exc:
            unreadable += 1
            logger.warning("skipping %s: not a readable DICOM file (%s)", path, exc)
    if unreadable:
        logger.info("skipped %d unreadable file(s)", unreadable)
    volume = volume_from_datasets(
        datasets,
        min_slices=min_slices,
        spacing_tolerance=spacing_tolerance,
        series_instance_uid=series_instance_uid,
        repair_uids=repair_uids,
    )
    logger.info(
        "read series %s: %d slices %s in %.2f s",
        volume.series_instance_uid, volume.shape[0], volume.shape, time.perf_counter() - started,
    )
    return volume


def volume_from_datasets(
    datasets: Sequence[Dataset],
    *,
    min_slices: int = DEFAULT_MIN_SLICES,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
    series_instance_uid: str | None = None,
    repair_uids: bool = False,
) -> CTVolume:
    """Build a ``CTVolume`` from in-memory datasets (with Pixel Data); see ``read_series``.

    Pixel Data is deleted from the kept datasets once decoded, so they become headers, and
    absent Type 2 patient/study attributes are added empty (result objects copy them).
    """
    if min_slices < 2:
        raise ValueError("min_slices must be at least 2")
    if not 0.0 < spacing_tolerance < 1.0:
        raise ValueError("spacing_tolerance must be between 0 and 1")
    images = [ds for ds in datasets if _is_ct_image(ds)]
    if len(images) < len(datasets):
        logger.info("ignored %d non-CT-image object(s)", len(datasets) - len(images))
    if not images:
        raise SeriesError("no CT image among the given files")
    images = _select_series(images, series_instance_uid)
    if repair_uids:
        repair_series_uids(images)
    for ds in images:
        _check_single_frame(ds)
        _add_missing_type2(ds)
        _blank_malformed_dates(ds)
    _check_size(images)
    stack = _check_stack(images, min_slices, spacing_tolerance)
    sorted_images = [images[i] for i in stack.order]
    first = sorted_images[0]
    try:
        direction = direction_matrix([float(v) for v in first.ImageOrientationPatient])
    except ValueError as exc:
        raise SeriesError(str(exc)) from exc
    rows, cols = int(first.Rows), int(first.Columns)
    pixel_spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    slice_spacing = stack.slice_spacing_mm
    hu = _decode_hu(sorted_images, rows, cols)
    return CTVolume(
        hu=hu,
        spacing_mm=(slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        origin_lps=tuple(float(v) for v in first.ImagePositionPatient),  # type: ignore[arg-type]
        direction=direction,
        datasets=tuple(sorted_images),
        study_instance_uid=str(first.get("StudyInstanceUID", "") or ""),
        series_instance_uid=str(first.get("SeriesInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
    )


def _sop_class_of(ds: Dataset) -> str:
    value = str(ds.get("SOPClassUID", "") or "")
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return value


def _is_ct_image(ds: Dataset) -> bool:
    """CT Image Storage instances with pixels and a position; localizers excluded."""
    sop_class = _sop_class_of(ds)
    if sop_class and sop_class not in CT_SOP_CLASS_UIDS:
        return False
    if not sop_class and str(ds.get("Modality", "")) != "CT":
        return False
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return False
    return "PixelData" in ds and "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds


def _select_series(images: list[Dataset], wanted: str | None) -> list[Dataset]:
    by_series: dict[str, list[Dataset]] = defaultdict(list)
    for ds in images:
        by_series[str(ds.get("SeriesInstanceUID", "") or "")].append(ds)
    if wanted is not None:
        if wanted not in by_series:
            raise SeriesError(f"no CT image of series {wanted!r} among the given files")
        return by_series[wanted]
    if len(by_series) > 1:
        listing = ", ".join(f"{uid or '<empty>'} ({len(v)} images)" for uid, v in by_series.items())
        raise SeriesError(f"files hold {len(by_series)} CT series, choose one: {listing}")
    return images


def _check_single_frame(ds: Dataset) -> None:
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise SeriesError(f"instance {ds.get('SOPInstanceUID', '?')} has {frames} frames; "
                          "only single-frame CT images are supported")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or not str(
        ds.get("PhotometricInterpretation", "MONOCHROME2")
    ).startswith("MONOCHROME"):
        raise SeriesError(f"instance {ds.get('SOPInstanceUID', '?')} is not a grey-scale image")


# Patient and study attributes of Type 2 (present, possibly empty) that result objects copy
# from their source images; some exports omit them altogether.
TYPE2_PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def _add_missing_type2(ds: Dataset) -> None:
    """Add absent Type 2 patient/study attributes as empty values (PS3.3 §7.4)."""
    for keyword in TYPE2_PATIENT_STUDY_KEYWORDS:
        if keyword not in ds:
            setattr(ds, keyword, "")


# Dates and times the result objects copy; the analysis needs none of them.
COPIED_DATE_TIME_KEYWORDS = (
    "PatientBirthDate", "PatientBirthTime", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime",
    "AcquisitionDate", "AcquisitionTime", "ContentDate", "ContentTime",
)
_DATE_TIME_PARSERS = {"DA": DA, "TM": TM, "DT": DT}


def _blank_malformed_dates(ds: Dataset) -> None:
    """Empty a copied date or time that is not valid DICOM (e.g. a birth date 'notadate'):
    the writers would refuse to copy it and fail a job over a value the analysis never
    reads. Only the attribute's name is logged, never its value."""
    for keyword in COPIED_DATE_TIME_KEYWORDS:
        if keyword not in ds:
            continue
        elem = ds.data_element(keyword)
        parse = _DATE_TIME_PARSERS.get(elem.VR) if elem is not None else None
        if elem is None or parse is None or not elem.value:
            continue
        try:
            parse(str(elem.value))
        except (ValueError, TypeError, OverflowError):
            elem.value = ""
            logger.warning("%s is not a valid %s; the result objects carry it empty",
                           keyword, elem.VR)


def _check_size(images: list[Dataset]) -> None:
    """Refuse matrices past any CT before a voxel is allocated."""
    rows, cols = int(images[0].Rows), int(images[0].Columns)
    if not (0 < rows <= MAX_MATRIX and 0 < cols <= MAX_MATRIX) or (
        len(images) * rows * cols > MAX_VOXELS
    ):
        raise SeriesError(
            f"{len(images)} slices of {rows}x{cols} exceed the supported size "
            f"(matrix up to {MAX_MATRIX}, {MAX_VOXELS} voxels)"
        )


def _slice_geometry(ds: Dataset) -> SliceGeometry:
    number = ds.get("InstanceNumber", "?")
    if "PixelSpacing" not in ds:
        raise SeriesError(f"PixelSpacing is missing (instance {number})")
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    position = [float(v) for v in ds.ImagePositionPatient]
    spacing = [float(v) for v in ds.PixelSpacing]
    if len(orientation) != 6 or len(position) != 3 or len(spacing) != 2:
        raise SeriesError(f"malformed geometry attributes in instance {number}")
    return SliceGeometry(
        position=(position[0], position[1], position[2]),
        orientation=(orientation[0], orientation[1], orientation[2],
                     orientation[3], orientation[4], orientation[5]),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        pixel_spacing=(spacing[0], spacing[1]),
        instance_number=int(ds.get("InstanceNumber", 0) or 0),
    )


def _check_stack(images: list[Dataset], min_slices: int, spacing_tolerance: float) -> Stack:
    """The shared stack rules (``dicomnode.contracts.stack``), as a ``SeriesError``."""
    try:
        stack = check_stack(
            [_slice_geometry(ds) for ds in images],
            min_slices=min_slices, spacing_tolerance=spacing_tolerance,
        )
    except StackError as exc:
        raise SeriesError(str(exc)) from exc
    if stack.dropped:
        logger.warning(
            "dropped %d slice(s) repeating a position (kept the lowest instance numbers)",
            len(stack.dropped),
        )
    return stack


def _decode_hu(images: list[Dataset], rows: int, cols: int) -> npt.NDArray[np.float32]:
    """Decode every slice into one float32 HU array and release the Pixel Data."""
    hu = np.empty((len(images), rows, cols), dtype=np.float32)
    for index, ds in enumerate(images):
        try:
            stored = stored_pixels(ds)
        except Exception as exc:  # decoders raise many types (RuntimeError, ValueError...)
            syntax = ds.file_meta.get("TransferSyntaxUID", "?") if hasattr(ds, "file_meta") else "?"
            raise SeriesError(
                f"cannot decode instance {ds.get('InstanceNumber', '?')} "
                f"(transfer syntax {syntax}): {exc}"
            ) from exc
        if stored.shape != (rows, cols):
            raise SeriesError(f"decoded slice has shape {stored.shape}, expected {(rows, cols)}")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        target = hu[index]
        target[...] = stored
        if slope != 1.0:
            target *= np.float32(slope)
        if intercept != 0.0:
            target += np.float32(intercept)
        del ds.PixelData
    return hu


def ct_headers(
    shape_zyx: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
    origin_lps: Sequence[float] = (0.0, 0.0, 0.0),
    direction: npt.NDArray[np.float64] | None = None,
    *,
    uid_root: str = "synthetic",
    patient_id: str = "SYNTHETIC",
) -> list[Dataset]:
    """Minimal valid CT Image headers (no Pixel Data) for a synthetic regular stack.

    Used to give synthetic volumes the source references SEG and SR writers need; UIDs are
    derived from ``uid_root``. Pixel-description attributes describe signed 16-bit HU.
    """
    n_slices, rows, cols = shape_zyx
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    orientation = orientation_of(matrix)
    orientation_axes(orientation)  # validates orthonormality
    origin = np.asarray(origin_lps, dtype=np.float64)
    study_uid = derive_uid(uid_root, "study")
    series_uid = derive_uid(uid_root, "series")
    frame_uid = derive_uid(uid_root, "frame-of-reference")
    headers: list[Dataset] = []
    for z in range(n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = derive_uid(uid_root, "instance", z)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDate = "20200101"
        ds.StudyTime = "120000"
        ds.AccessionNumber = ""
        ds.Modality = "CT"
        ds.Manufacturer = "synthetic"
        ds.ReferringPhysicianName = ""
        ds.PatientName = ""
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        ds.SeriesNumber = 1
        ds.InstanceNumber = z + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        position = origin + z * spacing_mm[0] * matrix[:, 2]
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = [round(v, 9) for v in orientation]
        ds.SliceThickness = spacing_mm[0]
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [spacing_mm[1], spacing_mm[2]]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.AcquisitionNumber = 1
        headers.append(ds)
    return headers


def volume_from_array(
    hu: npt.ArrayLike,
    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    origin_lps: Sequence[float] = (0.0, 0.0, 0.0),
    direction: npt.NDArray[np.float64] | None = None,
    *,
    uid_root: str = "synthetic",
    patient_id: str = "SYNTHETIC",
) -> CTVolume:
    """A ``CTVolume`` around a synthetic (z, y, x) HU array, with matching CT headers."""
    array = np.ascontiguousarray(hu, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"hu must be 3-D (z, y, x), got shape {array.shape}")
    if min(spacing_mm) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing_mm}")
    shape = (int(array.shape[0]), int(array.shape[1]), int(array.shape[2]))
    headers = ct_headers(
        shape, spacing_mm, origin_lps, direction, uid_root=uid_root, patient_id=patient_id
    )
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    return CTVolume(
        hu=array,
        spacing_mm=(float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2])),
        origin_lps=(float(origin_lps[0]), float(origin_lps[1]), float(origin_lps[2])),
        direction=direction_matrix(orientation_of(matrix)),
        datasets=tuple(headers),
        study_instance_uid=str(headers[0].StudyInstanceUID),
        series_instance_uid=str(headers[0].SeriesInstanceUID),
        frame_of_reference_uid=str(headers[0].FrameOfReferenceUID),
    )
