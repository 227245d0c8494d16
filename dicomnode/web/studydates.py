"""The study date of the dashboard's studies, read from one stored header each (the database
holds no dates of a patient's data). Shown behind login only, never logged."""

from __future__ import annotations

import functools
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

MAX_CACHED = 4096


@functools.lru_cache(maxsize=MAX_CACHED)
def _study_date(path: Path) -> str:
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyDate"])
    except (OSError, InvalidDicomError, ValueError):
        return ""
    value = str(ds.get("StudyDate", "") or "")
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else ""


def study_date(root: Path, relative_path: str) -> str:
    """``YYYY-MM-DD`` or "" when unknown."""
    return _study_date(root / relative_path) if relative_path else ""
