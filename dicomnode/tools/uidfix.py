"""Deterministic repair of missing or malformed UIDs (``dicomnode send --fix-uids``).

Some published data sets (COVID-CT-MD among them) carry bare-UUID Study/Series Instance UIDs,
empty SOP Instance and Frame of Reference UIDs and no Media Storage SOP Instance UID, which no
conformant receiver stores. The repair gives them valid UIDs that depend only on the originals
(and an optional salt), so sending the same files twice yields the same instances. Valid UIDs
are kept unless a salt asks for a new set. The test fixtures (``tests/peers/studies.py``) use
the same functions.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid
from pydicom.valuerep import validate_value

UID_PART_SEPARATOR = "|"
# Sequences whose items reference other instances; an item with an empty or invalid
# ReferencedSOPInstanceUID is dropped by the repair.
REFERENCE_SEQUENCES = ("ReferencedImageSequence", "SourceImageSequence")


class UIDRepairError(ValueError):
    """The file has no value to derive a SOP Instance UID from."""


@contextlib.contextmanager
def lenient_reading() -> Iterator[None]:
    """Read files with invalid UIDs without pydicom warnings (they are what is repaired)."""
    settings = pydicom_config.settings
    previous = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = previous


def is_valid_uid(value: object) -> bool:
    """True for a non-empty value that pydicom accepts as VR UI (PS3.5 9.1)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        validate_value("UI", value, pydicom_config.RAISE)
    except ValueError:
        return False
    return True


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return "-" in value


def hashed_uid(*parts: str) -> str:
    """A UID that depends only on ``parts`` (pydicom's root + SHA-512 of the joined parts)."""
    return str(generate_uid(entropy_srcs=[UID_PART_SEPARATOR.join(parts)]))


def derived_uid(original: str, salt: str, role: str) -> str:
    """A deterministic valid UID replacing ``original``.

    Without a salt a valid UID is kept and a bare UUID becomes ``2.25.<int(uuid)>`` (PS3.5
    B.2); otherwise (or with a salt) the UID is :func:`hashed_uid` of role, original, salt.
    """
    if not salt:
        if is_valid_uid(original):
            return original
        if _is_uuid(original):
            return f"2.25.{uuid.UUID(original).int}"
    return hashed_uid(role, original, salt)


def instance_uid(series_uid: str, instance_number: int) -> str:
    """The SOPInstanceUID of image ``instance_number`` of series ``series_uid``."""
    return hashed_uid("instance", series_uid, str(instance_number))


def frame_of_reference_uid(series_uid: str) -> str:
    """One FrameOfReferenceUID per (rewritten) series."""
    return hashed_uid("frame-of-reference", series_uid)


def drop_broken_references(ds: Dataset) -> None:
    for keyword in REFERENCE_SEQUENCES:
        if keyword not in ds:
            continue
        kept = [
            item for item in ds[keyword].value
            if is_valid_uid(str(item.get("ReferencedSOPInstanceUID", "")))
        ]
        if kept:
            ds[keyword].value = kept
        else:
            del ds[keyword]


def set_identity(ds: Dataset, study_uid: str, series_uid: str, sop_uid: str, for_uid: str) -> None:
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.FrameOfReferenceUID = for_uid
    drop_broken_references(ds)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)


def repair_uids(ds: Dataset, salt: str = "") -> str:
    """Give ``ds`` valid, deterministic UIDs in place; return its SOP Instance UID.

    Study and series UIDs: see :func:`derived_uid`. SOP Instance UID: kept when valid and no
    salt is given, else derived from the new series UID and InstanceNumber. One Frame of
    Reference UID per series. Pixel data and transfer syntax are not touched.
    """
    with lenient_reading():
        study_uid = derived_uid(str(ds.get("StudyInstanceUID", "")), salt, "study")
        series_uid = derived_uid(str(ds.get("SeriesInstanceUID", "")), salt, "series")
        old_sop = str(ds.get("SOPInstanceUID", ""))
        if not salt and is_valid_uid(old_sop):
            sop_uid = old_sop
        else:
            number = ds.get("InstanceNumber")
            if number is None or str(number).strip() == "":
                raise UIDRepairError("no InstanceNumber to derive a SOPInstanceUID from")
            sop_uid = instance_uid(series_uid, int(number))
        old_for = str(ds.get("FrameOfReferenceUID", ""))
        keep_for = not salt and is_valid_uid(old_for)
        for_uid = old_for if keep_for else frame_of_reference_uid(series_uid)
        set_identity(ds, study_uid, series_uid, sop_uid, for_uid)
    return sop_uid
