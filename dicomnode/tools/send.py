"""`dicomnode send`: a C-STORE SCU for folders, with one presentation context per syntax.

Files are streamed as they are on disk (no decoding, no transcoding), so compressed instances
arrive compressed. Each (SOP class, transfer syntax) pair gets its own presentation context.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE

from dicomnode.receiving.scp import set_tcp_nodelay

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128


@dataclass
class SendReport:
    sent: int = 0
    failed: int = 0
    not_dicom: int = 0
    statuses: Counter[int] = field(default_factory=Counter)


def dicom_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders recursively; keep regular files in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*")) if p.is_file())
        elif path.is_file():
            found.append(path)
    return found


def send_files(
    paths: Sequence[Path], host: str, port: int, called_aet: str, calling_aet: str = "DICOMNODE",
    *, timeout_s: float = 60.0,
) -> SendReport:
    report = SendReport()
    items: list[tuple[Path, str, str]] = []
    for path in dicom_files(paths):
        try:
            meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            items.append(
                (path, str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID))
            )
        except (InvalidDicomError, AttributeError, OSError):
            report.not_dicom += 1
            log.warning("not a DICOM file, skipped: %s", path)
    pairs = sorted({(sop, ts) for _, sop, ts in items})
    if len(pairs) > MAX_CONTEXTS:
        raise ValueError(f"{len(pairs)} SOP class/transfer syntax pairs exceed {MAX_CONTEXTS}")
    if not items:
        return report
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop, ts in pairs:
        ae.add_requested_context(sop, ts)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise ConnectionError(f"association with {called_aet}@{host}:{port} was not established")
    set_tcp_nodelay(getattr(assoc.dul.socket, "socket", None))
    try:
        for number, (path, _sop, _ts) in enumerate(items, start=1):
            status = assoc.send_c_store(path, msg_id=number % 0xFFFF + 1)
            code = getattr(status, "Status", None)
            if code is None:
                report.failed += 1
                log.error("no response for %s (association aborted?)", path)
                if not assoc.is_established:
                    break
                continue
            report.statuses[int(code)] += 1
            if int(code) in (0x0000, 0xB000, 0xB006, 0xB007):
                report.sent += 1
            else:
                report.failed += 1
                log.warning("%s refused: 0x%04X %s", path, int(code),
                            getattr(status, "ErrorComment", ""))
    finally:
        if assoc.is_established:
            assoc.release()
    return report
