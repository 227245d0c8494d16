"""Turn the DICOM files of one CT series into a ``CTVolume`` (HU, LPS geometry, headers).

``read_series`` accepts any transfer syntax pydicom can decode through its plug-ins
(pylibjpeg, pyjpegls, gdcm), keeps the CT images, sorts them along the slice normal and
refuses series whose geometry is not a regular stack (mixed orientations, a missing slice,
sheared positions) with a ``SeriesError`` that says exactly what is wrong. The returned
headers keep every attribute except Pixel Data, which is released after decoding.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from pipeline.errors import SeriesError
from pipeline.geometry import direction_matrix, orientation_axes, orientation_of
from pipeline.types import CTVolume
from pipeline.writers.uids import derive_uid, is_valid_uid, uuid_string_to_uid

logger = logging.getLogger(__name__)

DEFAULT_MIN_SLICES = 10
DEFAULT_SPACING_TOLERANCE = 0.1  # allowed relative deviation of a slice gap from the median
ORIENTATION_TOLERANCE = 1e-3  # allowed difference of direction cosines between slices
DUPLICATE_POSITION_TOLERANCE_MM = 1e-3  # slices closer than this along the normal are duplicates
IN_PLANE_SHIFT_TOLERANCE_PIXELS = 0.5  # allowed in-plane drift of ImagePositionPatient
PIXEL_SPACING_TOLERANCE_MM = 1e-3
# Used for repaired UIDs: a constant root so the same broken input always gets the same UIDs.
REPAIR_UID_ROOT = "urn:chest-ct-dicomnode:repaired-input"
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
    :func:`repair_uids`), for offline analysis of defective exports.
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
        _repair_uid_attributes(images)
    for ds in images:
        _check_single_frame(ds)
        _add_missing_type2(ds)
    sorted_images, positions, direction = _sort_along_normal(images)
    if len(sorted_images) < min_slices:
        raise SeriesError(
            f"series has {len(sorted_images)} distinct slices, at least {min_slices} needed"
        )
    rows, cols, pixel_spacing = _check_matrix(sorted_images)
    slice_spacing = _check_gaps(positions, spacing_tolerance)
    _check_in_plane_alignment(sorted_images, direction, pixel_spacing)
    hu = _decode_hu(sorted_images, rows, cols)
    first = sorted_images[0]
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


def _sort_along_normal(
    images: list[Dataset],
) -> tuple[list[Dataset], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Sort by position along the slice normal, drop duplicate positions, check orientation."""
    reference = [float(v) for v in images[0].ImageOrientationPatient]
    try:
        direction = direction_matrix(reference)
    except ValueError as exc:
        raise SeriesError(str(exc)) from exc
    for ds in images[1:]:
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if iop.shape != (6,) or np.max(np.abs(iop - reference)) > ORIENTATION_TOLERANCE:
            raise SeriesError(
                f"inconsistent ImageOrientationPatient: {iop.tolist()} (instance "
                f"{ds.get('InstanceNumber', '?')}) differs from {reference}"
            )
    normal = direction[:, 2]
    positions = np.asarray(
        [np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal for ds in images]
    )
    instance_numbers = [int(ds.get("InstanceNumber", 0) or 0) for ds in images]
    order = sorted(range(len(images)), key=lambda i: (positions[i], instance_numbers[i]))
    kept: list[int] = []
    for i in order:
        if kept and abs(positions[i] - positions[kept[-1]]) < DUPLICATE_POSITION_TOLERANCE_MM:
            logger.warning(
                "dropping instance %s: duplicate slice position %.3f mm (kept instance %s)",
                instance_numbers[i], positions[i], instance_numbers[kept[-1]],
            )
            continue
        kept.append(i)
    if len(kept) < len(images):
        logger.warning("dropped %d duplicate-position slice(s)", len(images) - len(kept))
    return [images[i] for i in kept], positions[kept], direction


def _check_matrix(images: list[Dataset]) -> tuple[int, int, tuple[float, float]]:
    first = images[0]
    rows, cols = int(first.Rows), int(first.Columns)
    if "PixelSpacing" not in first:
        raise SeriesError("PixelSpacing is missing")
    spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    if min(spacing) <= 0:
        raise SeriesError(f"PixelSpacing {list(spacing)} is not positive")
    for ds in images[1:]:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise SeriesError(
                f"inconsistent matrix: instance {ds.get('InstanceNumber', '?')} is "
                f"{ds.Rows}x{ds.Columns}, first slice {rows}x{cols}"
            )
        other = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
        deviation = max(abs(a - b) for a, b in zip(other, spacing, strict=True))
        if deviation > PIXEL_SPACING_TOLERANCE_MM:
            raise SeriesError(
                f"inconsistent PixelSpacing: instance {ds.get('InstanceNumber', '?')} has "
                f"{list(other)}, first slice {list(spacing)}"
            )
    return rows, cols, spacing


def _check_gaps(positions: npt.NDArray[np.float64], tolerance: float) -> float:
    """Check regular slice gaps; return the slice spacing in mm from the positions."""
    gaps = np.diff(positions)
    median = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        if abs(gap - median) <= tolerance * median:
            continue
        ratio = gap / median
        if ratio > 1.5 and abs(ratio - round(ratio)) <= tolerance * round(ratio):
            missing = int(round(ratio)) - 1
            raise SeriesError(
                f"{missing} slice(s) missing between positions {positions[i]:.2f} mm and "
                f"{positions[i + 1]:.2f} mm (slice spacing {median:.2f} mm)"
            )
        raise SeriesError(
            f"irregular slice spacing: gap of {gap:.2f} mm between positions "
            f"{positions[i]:.2f} mm and {positions[i + 1]:.2f} mm, median gap {median:.2f} mm"
        )
    return float((positions[-1] - positions[0]) / (len(positions) - 1))


def _check_in_plane_alignment(
    images: list[Dataset], direction: npt.NDArray[np.float64], pixel_spacing: tuple[float, float]
) -> None:
    """Refuse stacks whose slices shift in-plane (gantry tilt or sheared reformats)."""
    origin = np.asarray([float(v) for v in images[0].ImagePositionPatient])
    offsets = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in images]) - origin
    along_rows = np.abs(offsets @ direction[:, 0]) / pixel_spacing[1]
    along_cols = np.abs(offsets @ direction[:, 1]) / pixel_spacing[0]
    worst = float(max(along_rows.max(), along_cols.max()))
    if worst > IN_PLANE_SHIFT_TOLERANCE_PIXELS:
        raise SeriesError(
            f"slice positions drift {worst:.1f} pixels in-plane (gantry tilt or sheared stack); "
            "only orthogonal stacks are supported"
        )


def _decode_hu(images: list[Dataset], rows: int, cols: int) -> npt.NDArray[np.float32]:
    """Decode every slice into one float32 HU array and release the Pixel Data."""
    hu = np.empty((len(images), rows, cols), dtype=np.float32)
    for index, ds in enumerate(images):
        try:
            stored = pixel_array(ds)
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


def repair_uids(datasets: Sequence[Dataset]) -> int:
    """Replace missing or malformed UIDs of one series in place; return how many changed.

    Bare UUID strings become ``2.25.<int(uuid)>``; empty values are derived from stable header
    attributes (so the same files always get the same UIDs): the study from patient and study
    attributes, the series from the study and series attributes, the frame of reference from
    the series, and each SOP Instance UID from the series, InstanceNumber and position (or from
    the file meta MediaStorageSOPInstanceUID when that one is valid and not repeated in
    another file of the series). A missing SOP Class UID
    is taken from the file meta. Meant for offline analysis; the node refuses such input.
    """
    return _repair_uid_attributes(list(datasets))


def _repaired(value: str, *entropy: object) -> str:
    from_uuid = uuid_string_to_uid(value) if value else None
    if from_uuid is not None:
        return from_uuid
    return derive_uid(REPAIR_UID_ROOT, value, *entropy)


def _meta_instance_uid(ds: Dataset) -> str:
    meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
    return str(meta.get("MediaStorageSOPInstanceUID", "") or "")


def _repair_uid_attributes(datasets: list[Dataset]) -> int:
    if not datasets:
        return 0
    changed = 0
    first = datasets[0]
    study_keys = [str(first.get(k, "") or "") for k in (
        "PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
        "FrameOfReferenceUID",
    )]
    series_keys = [str(first.get(k, "") or "") for k in (
        "SeriesNumber", "SeriesDescription", "SeriesDate", "SeriesTime", "Modality",
        "FrameOfReferenceUID",
    )]
    study_uid = str(first.get("StudyInstanceUID", "") or "")
    if not is_valid_uid(study_uid):
        study_uid = _repaired(study_uid, "study", *study_keys)
    series_uid = str(first.get("SeriesInstanceUID", "") or "")
    if not is_valid_uid(series_uid):
        series_uid = _repaired(series_uid, "series", study_uid, *series_keys)
    frame_uid = str(first.get("FrameOfReferenceUID", "") or "")
    if not is_valid_uid(frame_uid):
        frame_uid = _repaired(frame_uid, "frame-of-reference", series_uid)
    meta_counts = Counter(_meta_instance_uid(ds) for ds in datasets)
    for ds in datasets:
        for keyword, value in (
            ("StudyInstanceUID", study_uid),
            ("SeriesInstanceUID", series_uid),
            ("FrameOfReferenceUID", frame_uid),
        ):
            if str(ds.get(keyword, "") or "") != value:
                setattr(ds, keyword, value)
                changed += 1
        meta = ds.file_meta if hasattr(ds, "file_meta") else FileMetaDataset()
        if not str(ds.get("SOPClassUID", "") or ""):
            ds.SOPClassUID = str(meta.get("MediaStorageSOPClassUID", "") or CTImageStorage)
            changed += 1
        sop_uid = str(ds.get("SOPInstanceUID", "") or "")
        if not is_valid_uid(sop_uid):
            meta_uid = _meta_instance_uid(ds)
            # A file-meta UID shared by several files is a placeholder, not an identity.
            if is_valid_uid(meta_uid) and not sop_uid and meta_counts[meta_uid] == 1:
                ds.SOPInstanceUID = meta_uid
            else:
                position = "\\".join(str(v) for v in ds.get("ImagePositionPatient", []) or [])
                ds.SOPInstanceUID = _repaired(
                    sop_uid, "instance", series_uid, ds.get("InstanceNumber", ""),
                    ds.get("AcquisitionNumber", ""), position,
                )
            changed += 1
        if hasattr(ds, "file_meta"):
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    if len(set(sop_uids)) != len(sop_uids):
        raise SeriesError("repaired SOP Instance UIDs are not unique (duplicate instances?)")
    if changed:
        logger.warning(
            "repaired %d UID attribute(s) of series %s (%d instances): input had missing or "
            "malformed UIDs", changed, series_uid, len(datasets),
        )
    return changed


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
