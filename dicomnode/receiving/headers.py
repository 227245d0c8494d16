"""Reading plain values out of DICOM headers, tolerant of absent or malformed elements.

The receiver reads a score of header values per instance. pydicom converts an element on first
access through its keyword lookup, value converters and hooks; for the plain ASCII values read
here the received bytes are decoded directly instead (about a tenth of the cost), and anything
else (text outside ASCII, an element already converted, an unexpected VR) takes pydicom's
conversion, so both give the same value.
"""

from __future__ import annotations

import struct

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue

from dicomnode.db.records import InstanceRecord

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "SH", "TM", "UI"})
_TAGS: dict[str, tuple[int, str]] = {}
_US = struct.Struct("<H")


def _tag(keyword: str) -> tuple[int, str]:
    known = _TAGS.get(keyword)
    if known is None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"no DICOM keyword {keyword!r}")
        known = _TAGS[keyword] = (int(tag), dictionary_VR(tag))
    return known


def _raw(ds: Dataset, keyword: str) -> tuple[bytes | None, str, bool]:
    """(the received bytes of the element, or None if converted; its VR; True if absent)."""
    tag, vr = _tag(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return None, vr, True
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        return elem.value, elem.VR or vr, False
    return None, vr, False


def _fast_text(ds: Dataset, keyword: str) -> str | None:
    """The element's text from its received bytes ("" when absent); None: use pydicom."""
    raw, vr, absent = _raw(ds, keyword)
    if absent:
        return ""
    if raw is None or vr not in _TEXT_VRS:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if "\\" in text:
        return "\\".join(v.strip("\x00 ") for v in text.split("\\"))
    return text.strip("\x00 ")


def is_empty(ds: Dataset, keyword: str) -> bool:
    """True if the element is absent or has no value."""
    elem = ds.get_item(_tag(keyword)[0])
    if elem is None:
        return True
    value = elem.value
    if isinstance(value, bytes | str | list | tuple | MultiValue):
        return len(value) == 0
    return value is None


def text_value(ds: Dataset, keyword: str) -> str:
    """The element as text; multi-valued elements joined with a backslash as on the wire."""
    fast = _fast_text(ds, keyword)
    if fast is not None:
        return fast
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def uid_value(ds: Dataset, keyword: str) -> str:
    """A UID element as text ("" when absent)."""
    return text_value(ds, keyword)


def int_value(ds: Dataset, keyword: str) -> int | None:
    raw, vr, absent = _raw(ds, keyword)
    if absent:
        return None
    if raw is not None and vr == "US" and len(raw) >= 2:
        return int(_US.unpack_from(raw)[0])
    value: object = _fast_text(ds, keyword) if vr in _TEXT_VRS else None
    if value is None:
        value = ds.get(keyword)
    try:
        return int(str(value).split("\\")[0]) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def float_value(ds: Dataset, keyword: str) -> float | None:
    value: object = _fast_text(ds, keyword)
    if value is None:
        value = ds.get(keyword)
    try:
        return float(str(value).split("\\")[0]) if value not in (None, "") else None
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
        study_instance_uid=uid_value(ds, "StudyInstanceUID"),
        series_instance_uid=uid_value(ds, "SeriesInstanceUID"),
        sop_instance_uid=uid_value(ds, "SOPInstanceUID"),
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
