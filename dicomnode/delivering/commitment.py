"""Storage Commitment Push Model (SCU side): N-ACTION requests and their N-EVENT-REPORTs.

The exporter asks a destination to commit a set of sent objects with N-ACTION; the PACS answers
later with N-EVENT-REPORT, usually on a new association to the node's receiver (Orthanc does so
to the modality registered for our AE title), or on the same association. Either way the report
reaches :meth:`CommitmentTracker.on_event_report`, which the receiver binds to
EVT_N_EVENT_REPORT. Requests not answered in time are left to the read-back query.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.uid import generate_uid

from dicomnode.config import Destination, ExportSettings
from dicomnode.db.exports import ExportTicket
from dicomnode.delivering.dimse import STORAGE_COMMITMENT_PUSH, associate, next_message_id

log = logging.getLogger(__name__)

# The well-known SOP Instance of the Storage Commitment Push Model.
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID


class CommitmentUnsupportedError(Exception):
    """The destination did not accept the Storage Commitment Push Model context."""


class CommitmentError(Exception):
    """The N-ACTION could not be sent or was refused."""


@dataclass
class _Request:
    destination: str
    by_uid: dict[str, int]  # SOP Instance UID -> export id
    deadline: float


@dataclass
class Report:
    """A PACS's answer to one commitment request: which export ids it holds, which not."""

    destination: str
    committed: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)


class CommitmentTracker:
    """Open commitment requests, shared by the exporter threads and the receiver."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[str, _Request] = {}
        self._reports: list[Report] = []

    def awaiting(self, destination: str) -> set[int]:
        with self._lock:
            return {eid for r in self._open.values() if r.destination == destination
                    for eid in r.by_uid.values()}

    def request(
        self, destination: Destination, settings: ExportSettings, calling_ae_title: str,
        tickets: Sequence[ExportTicket],
    ) -> str:
        """Send one N-ACTION for ``tickets``; return its Transaction UID."""
        transaction_uid = generate_uid()
        ds = Dataset()
        ds.TransactionUID = transaction_uid
        ds.ReferencedSOPSequence = [_reference(t.sop_class_uid, t.sop_instance_uid)
                                    for t in tickets]
        with self._lock:  # registered first: the report may come before N-ACTION returns
            self._open[transaction_uid] = _Request(
                destination.name, {t.sop_instance_uid: t.export_id for t in tickets},
                time.monotonic() + settings.commitment_timeout_s,
            )
        try:
            self._send(destination, settings, calling_ae_title, ds)
        except Exception:
            with self._lock:
                self._open.pop(transaction_uid, None)
            raise
        return transaction_uid

    def _send(self, destination: Destination, settings: ExportSettings, calling: str,
              ds: Dataset) -> None:
        try:
            assoc = associate(destination, settings, calling,
                              [(STORAGE_COMMITMENT_PUSH, "1.2.840.10008.1.2.1"),
                               (STORAGE_COMMITMENT_PUSH, "1.2.840.10008.1.2")])
        except OSError as exc:
            raise CommitmentError(f"cannot associate: {exc}") from exc
        if not assoc.is_established:
            raise CommitmentError("association for storage commitment not established")
        try:
            if not assoc.accepted_contexts:
                raise CommitmentUnsupportedError(destination.name)
            status, _reply = assoc.send_n_action(
                ds, REQUEST_COMMITMENT, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE,
                msg_id=next_message_id(),
            )
            code = getattr(status, "Status", None)
            if code is None or int(code) != 0:
                raise CommitmentError(f"N-ACTION answered {code!r}")
        finally:
            if assoc.is_established:
                assoc.release()

    def on_event_report(self, event: Any) -> tuple[int, Dataset | None]:
        """EVT_N_EVENT_REPORT handler: record which objects the PACS committed."""
        parsed = parse_report(event)
        if parsed is None:
            return 0x0110, None
        self.apply_report(*parsed)
        return 0x0000, None

    def apply_report(self, transaction_uid: str, committed: list[str], failed: list[str]) -> None:
        """Record a report (from this process's receiver, or relayed by a receiver process)."""
        with self._lock:
            request = self._open.pop(transaction_uid, None)
            if request is None:
                log.warning("storage commitment report for unknown transaction %s",
                            transaction_uid)
                return
            report = Report(request.destination)
            for sop_uids, export_ids in ((committed, report.committed),
                                         (failed, report.failed)):
                for sop_uid in sop_uids:
                    eid = request.by_uid.pop(sop_uid, None)
                    if eid is not None:
                        export_ids.append(eid)
            self._reports.append(report)
        log.info("storage commitment %s from %s: %d committed, %d failed", transaction_uid,
                 request.destination, len(report.committed), len(report.failed))

    def take_reports(self, destination: str) -> list[Report]:
        with self._lock:
            mine = [r for r in self._reports if r.destination == destination]
            self._reports = [r for r in self._reports if r.destination != destination]
            return mine

    def take_expired(self, destination: str, now: float | None = None) -> list[int]:
        """Export ids of this destination's requests that were not answered in time."""
        now = time.monotonic() if now is None else now
        with self._lock:
            late = [uid for uid, r in self._open.items()
                    if r.destination == destination and r.deadline <= now]
            return [eid for uid in late for eid in self._open.pop(uid).by_uid.values()]


def parse_report(event: Any) -> tuple[str, list[str], list[str]] | None:
    """(Transaction UID, committed and failed SOP Instance UIDs) of an N-EVENT-REPORT, or None
    when it cannot be read (answered 0x0110)."""
    try:
        info = event.event_information
        return (
            str(getattr(info, "TransactionUID", "")),
            [str(i.ReferencedSOPInstanceUID) for i in getattr(info, "ReferencedSOPSequence", [])],
            [str(i.ReferencedSOPInstanceUID) for i in getattr(info, "FailedSOPSequence", [])],
        )
    except Exception:  # noqa: BLE001 - a malformed report is refused, not fatal
        return None


def _reference(sop_class_uid: str, sop_instance_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class_uid
    item.ReferencedSOPInstanceUID = sop_instance_uid
    return item
