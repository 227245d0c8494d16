"""Reading plain values out of DICOM headers, tolerant of absent or malformed elements."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.multival import MultiValue

from dicomnode.db.records import InstanceRecord


def text_value(ds: Dataset, keyword: str) -> str:
    """The element as text; multi-valued elements joined with a backslash as on the wire."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def int_value(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def float_value(ds: Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def instance_record(
    ds: Dataset,
    *,
    sop_class_uid: str,
    transfer_syntax_uid: str,
    path: str,
    size_bytes: int,
    calling_ae_title: str = "",
) -> InstanceRecord:
    """The row values of a stored instance: identifiers and geometry, never patient data."""
    return InstanceRecord(
        study_instance_uid=str(ds.get("StudyInstanceUID", "")),
        series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        modality=text_value(ds, "Modality"),
        path=path,
        size_bytes=size_bytes,
        calling_ae_title=calling_ae_title,
        accession_number=text_value(ds, "AccessionNumber"),
        series_number=int_value(ds, "SeriesNumber"),
        series_description=text_value(ds, "SeriesDescription"),
        instance_number=int_value(ds, "InstanceNumber"),
        image_type=text_value(ds, "ImageType"),
        rows=int_value(ds, "Rows"),
        columns=int_value(ds, "Columns"),
        image_position=text_value(ds, "ImagePositionPatient") or None,
        image_orientation=text_value(ds, "ImageOrientationPatient") or None,
        pixel_spacing=text_value(ds, "PixelSpacing") or None,
        slice_thickness=float_value(ds, "SliceThickness"),
        frame_of_reference_uid=text_value(ds, "FrameOfReferenceUID")[:64],
        body_part=text_value(ds, "BodyPartExamined")[:32],
    )
