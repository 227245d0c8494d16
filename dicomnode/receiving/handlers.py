"""C-ECHO and C-STORE handlers: validate, persist durably, record, answer a precise status.

Handlers never run inference and hold nothing heavy: the analysis happens in worker processes.
A success status is returned only after the file is fsynced and renamed into place and its row
is committed (see ``dicomnode.receiving.storage`` and ``dicomnode.db.records``).
"""

from __future__ import annotations

import logging
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pynetdicom.events import Event
from sqlalchemy.exc import SQLAlchemyError

from dicomnode.db.records import InstanceRecorder, StoredInstance
from dicomnode.receiving.filemeta import file_header
from dicomnode.receiving.headers import instance_record
from dicomnode.receiving.limits import pixel_problem
from dicomnode.receiving.messages import refusal_of
from dicomnode.receiving.statuses import StoreStatus
from dicomnode.receiving.storage import (
    DiskFullError,
    InvalidUIDError,
    Storage,
    check_uid,
    is_valid_uid,
)

log = logging.getLogger(__name__)

ERROR_COMMENT_MAX_LEN = 64  # LO value representation
_SOP_LOCKS = tuple(threading.Lock() for _ in range(64))


def _refuse(code: StoreStatus, reason: str, sop_uid: str, calling: str) -> Dataset:
    """Log one line naming the instance, the sender, the status and the reason; answer it."""
    level = logging.ERROR if code == StoreStatus.OUT_OF_RESOURCES else logging.WARNING
    log.log(level, "refused instance %r from %s with 0x%04X: %s", sop_uid, calling, code, reason)
    return _status(code, reason)


def _status(code: StoreStatus, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[:ERROR_COMMENT_MAX_LEN]
    return ds


def handle_echo(event: Event) -> int:
    log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return int(StoreStatus.SUCCESS)


def handle_store(
    event: Event, storage: Storage, recorder: InstanceRecorder, max_bytes: int = 2**40
) -> Dataset:
    """Store one instance; every refusal names its reason in the status and in the log."""
    request: Any = event.request
    calling = str(event.assoc.requestor.ae_title).strip()
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    sop_class = str(request.AffectedSOPClassUID or "")
    refusal = refusal_of(request)
    if refusal is not None:
        return _refuse(refusal[0], refusal[1], sop_uid, calling)
    try:
        check_uid("Affected SOP Instance UID", sop_uid)
    except InvalidUIDError as exc:
        return _refuse(StoreStatus.INVALID_SOP_INSTANCE_UID, str(exc), sop_uid, calling)
    if not is_valid_uid(sop_class):
        return _refuse(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       "Affected SOP Class UID is not a valid UID", sop_uid, calling)
    try:
        ds = event.dataset
    except Exception as exc:  # pydicom raises many types on a corrupt stream
        return _refuse(
            StoreStatus.CANNOT_UNDERSTAND, f"data set cannot be decoded ({exc})", sop_uid, calling
        )
    if str(ds.get("SOPInstanceUID", "")) != sop_uid:
        return _refuse(StoreStatus.INVALID_SOP_INSTANCE_UID,
                       "SOPInstanceUID in data set differs from the request", sop_uid, calling)
    if str(ds.get("SOPClassUID", "")) != sop_class:
        return _refuse(
            StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
            "SOPClassUID differs from the request",
            sop_uid,
            calling,
        )
    transfer_syntax = str(getattr(getattr(event, "context", None), "transfer_syntax", "") or
                          "1.2.840.10008.1.2.1")
    try:
        problem = pixel_problem(ds, transfer_syntax, max_bytes)
    except Exception as exc:  # a value that cannot be read is a data set we cannot understand
        problem = (StoreStatus.CANNOT_UNDERSTAND, f"pixel attributes unreadable ({exc})")
    if problem is not None:
        return _refuse(problem[0], problem[1], sop_uid, calling)
    study_uid = str(ds.get("StudyInstanceUID", ""))
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    try:
        path = storage.instance_path(study_uid, series_uid, sop_uid)
    except InvalidUIDError as exc:
        return _refuse(StoreStatus.INVALID_STUDY_OR_SERIES_UID, str(exc), sop_uid, calling)

    # The same instance arriving on two associations at once is written by one of them only.
    with _SOP_LOCKS[hash(sop_uid) % len(_SOP_LOCKS)]:
        return _store_once(event, ds, path, sop_uid, sop_class, calling, storage, recorder)


def request_data_set(event: Event) -> BytesIO:
    data = getattr(event.request, "DataSet", None)
    return data if isinstance(data, BytesIO) else BytesIO()


def _conflict(
    ds: Dataset, stored: StoredInstance, sop_class: str, transfer_syntax: str, storage: Storage
) -> str:
    """Why a re-sent instance differs from the stored one ("" when it is the same instance)."""
    if stored.study_instance_uid != str(ds.get("StudyInstanceUID", "")):
        return "already stored in another study"
    if stored.series_instance_uid != str(ds.get("SeriesInstanceUID", "")):
        return "already stored in another series"
    if stored.sop_class_uid != sop_class:
        return "already stored with another SOP Class"
    if stored.transfer_syntax_uid == transfer_syntax and "PixelData" in ds:
        try:
            kept = dcmread(storage.absolute(stored.path)).get("PixelData")
        except Exception:  # an unreadable stored copy is for recovery, not a conflict
            return ""
        if kept != ds.PixelData:
            return "already stored with other pixel data"
    return ""


def _store_once(
    event: Event,
    ds: Dataset,
    path: Path,
    sop_uid: str,
    sop_class: str,
    calling: str,
    storage: Storage,
    recorder: InstanceRecorder,
) -> Dataset:
    transfer_syntax = str(event.context.transfer_syntax)
    try:
        stored = recorder.stored(sop_uid)
        if stored is not None:
            reason = _conflict(ds, stored, sop_class, transfer_syntax, storage)
            if not reason:
                log.debug("instance %s already stored; acknowledged without rewriting", sop_uid)
                recorder.resent(sop_uid)
                return _status(StoreStatus.SUCCESS)
            recorder.record_conflict(
                stored.study_id, f"instance {sop_uid} from {calling} refused: {reason}"
            )
            return _refuse(StoreStatus.UID_CONFLICT, f"SOP Instance UID {reason}", sop_uid,
                           calling)
        header = file_header(sop_class, sop_uid, transfer_syntax)
        received: BytesIO = request_data_set(event)
        with received.getbuffer() as body:  # written as received, not copied
            size = storage.write_instance(path, (header, body))
    except DiskFullError as exc:
        return _refuse(StoreStatus.OUT_OF_RESOURCES, str(exc), sop_uid, calling)
    except Exception as exc:
        log.exception("failed to store instance %s from %s", sop_uid, calling)
        return _status(StoreStatus.PROCESSING_FAILURE, f"storage failure: {type(exc).__name__}")

    record = instance_record(
        ds,
        sop_class_uid=sop_class,
        transfer_syntax_uid=transfer_syntax,
        path=storage.relative(path),
        size_bytes=size,
        calling_ae_title=calling,
    )
    try:
        recorder.record(record)
    except SQLAlchemyError as exc:
        log.error("instance %s written but not recorded: %s", sop_uid, exc)
        return _status(StoreStatus.CANNOT_RECORD, "database unavailable")
    log.debug("stored instance %s from %s", sop_uid, calling)
    return _status(StoreStatus.SUCCESS)
