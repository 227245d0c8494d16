"""Deterministic repair of missing or malformed UIDs of one series, for offline analysis of
defective exports (``dicomnode analyze``); the node itself refuses such input."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage

from pipeline.errors import SeriesError
from pipeline.writers.uids import derive_uid, is_valid_uid, uuid_string_to_uid

logger = logging.getLogger(__name__)

# A constant root, so the same broken input always gets the same UIDs.
REPAIR_UID_ROOT = "urn:chest-ct-dicomnode:repaired-input"


def repair_uids(datasets: Sequence[Dataset]) -> int:
    """Replace missing or malformed UIDs of one series in place; return how many changed.

    Bare UUID strings become ``2.25.<int(uuid)>``; empty values are derived from stable header
    attributes (so the same files always get the same UIDs): the study from patient and study
    attributes, the series from the study and series attributes, the frame of reference from
    the series, and each SOP Instance UID from the series, InstanceNumber and position (or from
    the file meta MediaStorageSOPInstanceUID when that one is valid and not repeated in
    another file of the series). A missing SOP Class UID is taken from the file meta. Meant for
    offline analysis; the node refuses such input.
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


def _series_level_uids(first: Dataset) -> tuple[str, str, str]:
    """(study, series, frame of reference) UIDs of the series: the valid ones kept, the others
    derived from stable header attributes."""
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
    return study_uid, series_uid, frame_uid


def _repair_instance(ds: Dataset, series_uid: str, meta_counts: Counter[str]) -> int:
    """Fill the SOP Class UID and repair the SOP Instance UID of one instance; the count."""
    changed = 0
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
    return changed


def _repair_uid_attributes(datasets: list[Dataset]) -> int:
    if not datasets:
        return 0
    changed = 0
    study_uid, series_uid, frame_uid = _series_level_uids(datasets[0])
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
        changed += _repair_instance(ds, series_uid, meta_counts)
    sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    if len(set(sop_uids)) != len(sop_uids):
        raise SeriesError("repaired SOP Instance UIDs are not unique (duplicate instances?)")
    if changed:
        logger.warning(
            "repaired %d UID attribute(s) of series %s (%d instances): input had missing or "
            "malformed UIDs", changed, series_uid, len(datasets),
        )
    return changed
