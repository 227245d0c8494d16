"""`dicomnode send`: a C-STORE SCU for folders, with one presentation context per syntax.

Files are streamed as they are on disk (no decoding, no transcoding), so compressed instances
arrive compressed. Each (SOP class, transfer syntax) pair gets its own presentation context.
A refused file does not stop the others; an association lost mid-way is opened again once and
the file resent (pynetdicom's SCU can lose a response). With ``fix_uids`` every file is read,
its missing or malformed UIDs are repaired deterministically (``dicomnode.tools.uidfix``) and
the repaired data set is sent; the files on disk are not changed.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE, _config

from dicomnode.errors import DicomNodeError
from dicomnode.receiving.scp import set_tcp_nodelay
from dicomnode.tools.uidfix import UIDRepairError, lenient_reading, repair_uids

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128
SUCCESS_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)


class SendError(DicomNodeError):
    """No association with the peer: nothing could be sent (the message says why)."""


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    not_dicom: int = 0
    statuses: Counter[int] = field(default_factory=Counter)  # refusals by status
    comments: dict[int, str] = field(default_factory=dict)  # first ErrorComment per status
    no_response: int = 0
    not_sendable: int = 0  # rejected before sending (e.g. a UID the SCU cannot encode)
    stopped: str = ""  # why the rest was not sent (the peer went away mid-way)


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders recursively; keep regular files in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file())
        elif path.is_file():
            found.append(path)
    return found


def _scan(paths: Sequence[Path], report: SendReport) -> list[tuple[Path, str, str]]:
    items: list[tuple[Path, str, str]] = []
    for path in dicom_files(paths):
        try:
            with lenient_reading():
                meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            items.append((path, str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)))
        except (InvalidDicomError, AttributeError, OSError, ValueError):
            report.not_dicom += 1
            log.warning("not a DICOM file, skipped: %s", path)
    return items


class _Link:
    """One association at a time, opened again when the peer drops it."""

    def __init__(self, ae: AE, host: str, port: int, called_aet: str) -> None:
        self._ae, self._host, self._port, self._called = ae, host, port, called_aet
        self.assoc: Any = None

    def open(self) -> Any:
        try:
            assoc = self._ae.associate(self._host, self._port, ae_title=self._called)
        except (OSError, RuntimeError, ValueError) as exc:
            where = f"{self._called}@{self._host}:{self._port}"
            raise SendError(f"cannot reach {where}: {exc}") from None
        if not assoc.is_established:
            what = "rejected the association" if assoc.is_rejected else "did not answer"
            raise SendError(f"{self._called}@{self._host}:{self._port} {what}")
        set_tcp_nodelay(getattr(assoc.dul.socket, "socket", None))
        self.assoc = assoc
        return assoc

    def store(self, payload: Path | Dataset, msg_id: int) -> Any:
        if self.assoc is None or not self.assoc.is_established:
            self.open()
        return self.assoc.send_c_store(payload, msg_id=msg_id)

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()


def _payload(path: Path, fix_uids: bool) -> Path | Dataset:
    if not fix_uids:
        return path
    with lenient_reading():
        ds = dcmread(path)
    repair_uids(ds)
    return ds


def _send_one(link: _Link, path: Path, number: int, fix_uids: bool, report: SendReport) -> None:
    try:
        payload = _payload(path, fix_uids)
    except (UIDRepairError, OSError, ValueError) as exc:
        report.failed += 1
        report.not_sendable += 1
        log.warning("%s not sent: %s", path, exc)
        return
    status = None
    for _attempt in range(2):  # once more on a new association if the response was lost
        try:
            status = link.store(payload, number % 0xFFFF + 1)
        except (ValueError, TypeError, AttributeError) as exc:  # refused by our own SCU
            report.failed += 1
            report.not_sendable += 1
            log.warning("%s not sent: %s", path, exc)
            return
        except (OSError, RuntimeError):
            status = None
        if status is not None and getattr(status, "Status", None) is not None:
            break
        link.close()
        link.assoc = None
    code = getattr(status, "Status", None)
    if code is None:
        report.failed += 1
        report.no_response += 1
        log.warning("no response for %s", path)
        return
    if int(code) in SUCCESS_STATUSES:
        report.sent += 1
        return
    report.failed += 1
    report.statuses[int(code)] += 1
    comment = str(getattr(status, "ErrorComment", "") or "")
    report.comments.setdefault(int(code), comment)
    log.warning("%s refused: 0x%04X %s", path, int(code), comment)


def send_files(
    paths: Sequence[Path], host: str, port: int, called_aet: str, calling_aet: str = "DICOMNODE",
    *, timeout_s: float = 60.0, fix_uids: bool = False,
) -> SendReport:
    """Send every DICOM file under ``paths``; raises SendError only if no association opens."""
    report = SendReport()
    items = _scan(paths, report)
    pairs = sorted({(sop, ts) for _, sop, ts in items})
    if len(pairs) > MAX_CONTEXTS:
        raise SendError(f"{len(pairs)} SOP class/transfer syntax pairs exceed {MAX_CONTEXTS}")
    if not items:
        return report
    _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's per-message narration
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop, ts in pairs:
        ae.add_requested_context(sop, ts)
    link = _Link(ae, host, port, called_aet)
    link.open()
    try:
        for number, (path, _sop, _ts) in enumerate(items, start=1):
            try:
                _send_one(link, path, number, fix_uids, report)
            except SendError as exc:  # the association could not be opened again
                report.stopped = str(exc)
                report.failed += len(items) - number + 1
                report.no_response += len(items) - number + 1
                break
    finally:
        link.close()
    return report
