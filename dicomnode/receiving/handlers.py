"""C-ECHO and C-STORE handling: validate, persist durably, record, answer a precise status.

Handlers never run inference and hold nothing heavy: the analysis happens in worker processes.
A success status is returned only after the file is synced under its final name (the durability
point, ``dicomnode.receiving.storage``); in the receiver its row then follows in the row
writer's next group commit (``dicomnode.db.row_writer``), and the start-up re-index records it
if the process dies first.

``StoreService.store`` is the one C-STORE path. The receiver calls it directly from the thread
that read the request (``messages.BoundedDIMSE``); ``StoreService.handle_event`` adapts a
pynetdicom event to it for requests that take pynetdicom's general path.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pynetdicom.dsutils import decode
from pynetdicom.events import Event

from dicomnode.db.records import InstanceRecorder, StoredInstance
from dicomnode.db.row_writer import RowBacklogFullError, RowWriter, RowWriterUnavailableError
from dicomnode.receiving.filemeta import file_header
from dicomnode.receiving.headers import instance_record, uid_value
from dicomnode.receiving.limits import pixel_problem
from dicomnode.receiving.scan import ScanError, scan_top_level, syntax_of
from dicomnode.receiving.statuses import Refusal, StoreStatus, refusal_of
from dicomnode.receiving.storage import (
    DiskFullError,
    InvalidUIDError,
    Storage,
    check_uid,
    is_valid_uid,
)

log = logging.getLogger(__name__)

ERROR_COMMENT_MAX_LEN = 64  # LO value representation
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
PENDING_ROW_WAIT_S = 5.0
_SOP_LOCKS = tuple(threading.Lock() for _ in range(64))


@dataclass(frozen=True)
class Answer:
    """The status (and Error Comment) a C-STORE request is answered with."""

    status: int
    comment: str = ""

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = self.status
        if self.comment:
            ds.ErrorComment = self.comment
        return ds


SUCCESS = Answer(int(StoreStatus.SUCCESS))


@dataclass(frozen=True)
class StoreRequest:
    """One received C-STORE: the command's UIDs, the sender, and the data set as received."""

    sop_instance_uid: str
    sop_class_uid: str
    calling_ae_title: str
    transfer_syntax: str
    data_set: BytesIO
    refusal: Refusal | None = None


def _refuse(code: StoreStatus, reason: str, sop_uid: str, calling: str) -> Answer:
    """Log one line naming the instance, the sender, the status and the reason; answer it."""
    level = logging.ERROR if code == StoreStatus.OUT_OF_RESOURCES else logging.WARNING
    log.log(level, "refused instance %r from %s with 0x%04X: %s", sop_uid, calling, code, reason)
    return Answer(int(code), reason[:ERROR_COMMENT_MAX_LEN])


def handle_echo(event: Event) -> int:
    log.info("C-ECHO from %s", event.assoc.requestor.ae_title)
    return int(StoreStatus.SUCCESS)


def decode_data_set(data: BytesIO, transfer_syntax: str) -> Dataset:
    """The received data set's elements (values decoded only when read): the top level from
    ``scan.scan_top_level``, or all of it from pydicom when the scan cannot read it."""
    syntax = syntax_of(transfer_syntax)
    if syntax.little_endian and not syntax.deflated:
        try:
            with data.getbuffer() as view:
                return scan_top_level(view, syntax.implicit)  # no copy of the data set
        except ScanError:
            pass
    return decode(data, syntax.implicit, syntax.little_endian, syntax.deflated)


def request_of(event: Event) -> StoreRequest:
    request: Any = event.request
    data = getattr(request, "DataSet", None)
    return StoreRequest(
        sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
        sop_class_uid=str(request.AffectedSOPClassUID or ""),
        calling_ae_title=str(event.assoc.requestor.ae_title).strip(),
        transfer_syntax=str(getattr(getattr(event, "context", None), "transfer_syntax", "")
                            or EXPLICIT_VR_LITTLE_ENDIAN),
        data_set=data if isinstance(data, BytesIO) else BytesIO(),
        refusal=refusal_of(request),
    )


class StoreService:
    """Checks, writes and records received instances; every refusal names its reason.

    An instance is acknowledged once its file is synced; its row follows in the next group
    commit of ``rows`` (the receiver's ``RowWriter``)."""

    def __init__(
        self, storage: Storage, recorder: InstanceRecorder, max_bytes: int, rows: RowWriter,
    ) -> None:
        self.storage = storage
        self.recorder = recorder
        self.max_bytes = max_bytes
        self.rows = rows

    def handle_event(self, event: Event) -> Dataset:
        """pynetdicom's EVT_C_STORE handler, for requests that take its general path."""
        return self.store(request_of(event)).as_dataset()

    def close(self) -> None:
        """Commit the rows still waiting (the receiver is stopping)."""
        self.rows.close()

    def _stored(self, sop_uid: str) -> StoredInstance | None:
        if self.rows.pending(sop_uid) is not None:
            self.rows.flush(PENDING_ROW_WAIT_S)  # compare with the committed row
        return self.recorder.stored(sop_uid)

    def store(self, req: StoreRequest) -> Answer:
        sop_uid, sop_class, calling = req.sop_instance_uid, req.sop_class_uid, req.calling_ae_title
        if req.refusal is not None:
            return _refuse(req.refusal[0], req.refusal[1], sop_uid, calling)
        try:
            check_uid("Affected SOP Instance UID", sop_uid)
        except InvalidUIDError as exc:
            return _refuse(StoreStatus.INVALID_SOP_INSTANCE_UID, str(exc), sop_uid, calling)
        if not is_valid_uid(sop_class):
            return _refuse(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           "Affected SOP Class UID is not a valid UID", sop_uid, calling)
        try:
            ds = decode_data_set(req.data_set, req.transfer_syntax)
        except Exception as exc:  # pydicom raises many types on a corrupt stream
            return _refuse(StoreStatus.CANNOT_UNDERSTAND, f"data set cannot be decoded ({exc})",
                           sop_uid, calling)
        if uid_value(ds, "SOPInstanceUID") != sop_uid:
            return _refuse(StoreStatus.INVALID_SOP_INSTANCE_UID,
                           "SOPInstanceUID in data set differs from the request", sop_uid, calling)
        if uid_value(ds, "SOPClassUID") != sop_class:
            return _refuse(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                           "SOPClassUID differs from the request", sop_uid, calling)
        try:
            problem = pixel_problem(ds, req.transfer_syntax, self.max_bytes)
        except Exception as exc:  # a value that cannot be read: a data set we cannot understand
            problem = (StoreStatus.CANNOT_UNDERSTAND, f"pixel attributes unreadable ({exc})")
        if problem is not None:
            return _refuse(problem[0], problem[1], sop_uid, calling)
        try:
            path = self.storage.instance_path(
                uid_value(ds, "StudyInstanceUID"), uid_value(ds, "SeriesInstanceUID"), sop_uid
            )
        except InvalidUIDError as exc:
            return _refuse(StoreStatus.INVALID_STUDY_OR_SERIES_UID, str(exc), sop_uid, calling)
        # The same instance arriving on two associations at once is written by one of them only.
        with _SOP_LOCKS[hash(sop_uid) % len(_SOP_LOCKS)]:
            return self._store_once(req, ds, path)

    def _conflict(self, ds: Dataset, stored: StoredInstance, req: StoreRequest) -> str:
        """Why a re-sent instance differs from the stored one ("" when it is the same one)."""
        if stored.study_instance_uid != uid_value(ds, "StudyInstanceUID"):
            return "already stored in another study"
        if stored.series_instance_uid != uid_value(ds, "SeriesInstanceUID"):
            return "already stored in another series"
        if stored.sop_class_uid != req.sop_class_uid:
            return "already stored with another SOP Class"
        if stored.transfer_syntax_uid == req.transfer_syntax and "PixelData" in ds:
            try:
                kept = dcmread(self.storage.absolute(stored.path)).get("PixelData")
            except Exception:  # an unreadable stored copy is for recovery, not a conflict
                return ""
            if kept != ds.PixelData:
                return "already stored with other pixel data"
        return ""

    def _store_once(self, req: StoreRequest, ds: Dataset, path: Path) -> Answer:
        sop_uid, calling = req.sop_instance_uid, req.calling_ae_title
        recorder, storage = self.recorder, self.storage
        try:
            stored = self._stored(sop_uid)
            if stored is not None:
                reason = self._conflict(ds, stored, req)
                if not reason:
                    log.debug("instance %s already stored; acknowledged without rewriting",
                              sop_uid)
                    recorder.resent(sop_uid)
                    return SUCCESS
                recorder.record_conflict(
                    stored.study_id, f"instance {sop_uid} from {calling} refused: {reason}"
                )
                return _refuse(StoreStatus.UID_CONFLICT, f"SOP Instance UID {reason}", sop_uid,
                               calling)
            self.rows.check()
            header = file_header(req.sop_class_uid, sop_uid, req.transfer_syntax)
            with req.data_set.getbuffer() as body:  # written as received, not copied
                size = storage.write_instance(path, (header, body))
        except (DiskFullError, RowBacklogFullError) as exc:
            return _refuse(StoreStatus.OUT_OF_RESOURCES, str(exc), sop_uid, calling)
        except RowWriterUnavailableError as exc:
            return _refuse(StoreStatus.CANNOT_RECORD, str(exc), sop_uid, calling)
        except Exception as exc:
            log.exception("failed to store instance %s from %s", sop_uid, calling)
            return Answer(int(StoreStatus.PROCESSING_FAILURE),
                          f"storage failure: {type(exc).__name__}")
        record = instance_record(
            ds, sop_class_uid=req.sop_class_uid, transfer_syntax_uid=req.transfer_syntax,
            path=storage.relative(path), size_bytes=size, calling_ae_title=calling,
        )
        try:
            self.rows.submit(record)
        except RowWriterUnavailableError as exc:  # stopping: re-indexed at the next start
            return _refuse(StoreStatus.CANNOT_RECORD, str(exc), sop_uid, calling)
        log.debug("stored instance %s from %s", sop_uid, calling)
        return SUCCESS
