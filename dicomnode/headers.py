"""Reading plain values out of DICOM headers, tolerant of absent or malformed elements."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.multival import MultiValue


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
