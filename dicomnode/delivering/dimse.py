"""C-STORE of result objects over one association, optionally DICOM TLS.

pynetdicom 3.0.4's SCU can occasionally lose a C-STORE response (then a DIMSE timeout and an
abort): an abort or empty status leaves the rest of the batch unsent, to go on a new
association. A SEG or SR whose SOP class the destination refuses in association negotiation is
reported as refused (the exporter then sends the overlay series instead).
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.association import Association

from dicomnode.config import Destination, ExportSettings
from dicomnode.db.exports import ExportTicket
from dicomnode.receiving.scp import set_tcp_nodelay

log = logging.getLogger(__name__)

WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})  # stored, with a remark
FALLBACK_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
VERIFICATION = "1.2.840.10008.1.1"
REPLACEABLE_KINDS = frozenset({"SEG", "SR"})  # the overlay series can stand in for these
MAX_CONTEXTS = 120
_message_ids = itertools.count(1)
# Stream files from disk in PDV-sized pieces instead of decoding and re-encoding each dataset.
_config.STORE_SEND_CHUNKED_DATASET = True


def next_message_id() -> int:
    return next(_message_ids) % 0xFFFF + 1


def client_tls(destination: Destination) -> tuple[ssl.SSLContext, str] | None:
    """The TLS context and server name for an outgoing association, or None without TLS."""
    if not destination.tls:
        return None
    cafile = str(destination.tls_ca) if destination.tls_ca else None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if destination.tls_cert is not None and destination.tls_key is not None:
        ctx.load_cert_chain(certfile=str(destination.tls_cert), keyfile=str(destination.tls_key))
    return ctx, destination.host


def associate(
    destination: Destination, settings: ExportSettings, calling_ae_title: str,
    contexts: Sequence[tuple[str, str]],
) -> Association:
    """Request an association offering ``contexts`` (SOP class, transfer syntax) pairs."""
    ae = AE(ae_title=calling_ae_title)
    ae.dimse_timeout = settings.dimse_timeout_s
    ae.acse_timeout = settings.dimse_timeout_s
    ae.network_timeout = settings.dimse_timeout_s
    ae.connection_timeout = settings.dimse_timeout_s
    for sop_class, ts in list(dict.fromkeys(contexts))[:MAX_CONTEXTS]:
        ae.add_requested_context(sop_class, ts)
    assoc = ae.associate(
        destination.host, destination.port, ae_title=destination.ae_title,
        tls_args=client_tls(destination),
    )
    if assoc.is_established:
        # pynetdicom's default DUL poll (1 ms) is kept: with several associations the
        # receiver's 0.2 ms made the idle reactor threads compete for the GIL, and it was not
        # faster in benchmarks/export.py here.
        set_tcp_nodelay(getattr(assoc.dul.socket, "socket", None))
    return assoc


@dataclass
class BatchOutcome:
    """What happened to each object of one association's batch."""

    sent: list[tuple[int, int]] = field(default_factory=list)  # (export id, status)
    failed: list[tuple[ExportTicket, int | None, str]] = field(default_factory=list)
    refused: list[tuple[ExportTicket, str]] = field(default_factory=list)
    unsent: list[ExportTicket] = field(default_factory=list)  # retry on a new association
    commitment: bool = False  # the destination accepted Storage Commitment Push Model


def transfer_syntax(path: Path) -> str:
    return str(read_file_meta_info(path).TransferSyntaxUID)


def store_batch(
    destination: Destination, settings: ExportSettings, calling_ae_title: str,
    data_dir: Path, tickets: Sequence[ExportTicket],
) -> BatchOutcome:
    """Send ``tickets`` over one association; never raises for network or peer errors."""
    outcome = BatchOutcome()
    contexts: list[tuple[str, str]] = []
    readable: list[ExportTicket] = []
    for t in tickets:
        try:
            contexts.append((t.sop_class_uid, transfer_syntax(data_dir / t.path)))
        except (OSError, ValueError, AttributeError) as exc:
            outcome.failed.append((t, None, f"cannot read result file: {exc}"))
            continue
        contexts += [(t.sop_class_uid, ts) for ts in FALLBACK_TRANSFER_SYNTAXES]
        readable.append(t)
    if not readable:
        return outcome
    if destination.confirm in ("auto", "commitment"):
        contexts.append((STORAGE_COMMITMENT_PUSH, "1.2.840.10008.1.2.1"))
    # Verification keeps the association up when the peer refuses every storage context, so
    # refused SOP classes are told apart from a failed association.
    contexts.append((VERIFICATION, "1.2.840.10008.1.2"))
    try:
        assoc = associate(destination, settings, calling_ae_title, contexts)
    except (OSError, ValueError, ssl.SSLError) as exc:
        outcome.failed += [(t, None, f"cannot associate: {exc}") for t in readable]
        return outcome
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "association failed"
        where = f"{destination.ae_title}@{destination.host}:{destination.port}"
        outcome.failed += [(t, None, f"{reason} by {where}") for t in readable]
        return outcome
    accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
    outcome.commitment = STORAGE_COMMITMENT_PUSH in accepted
    try:
        _send_all(assoc, readable, accepted, data_dir, outcome)
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def _send_all(
    assoc: Association, tickets: Sequence[ExportTicket], accepted: set[str], data_dir: Path,
    outcome: BatchOutcome,
) -> None:
    pending = list(tickets)
    while pending:
        ticket = pending.pop(0)
        if ticket.sop_class_uid not in accepted:
            reason = f"SOP class {ticket.sop_class_uid} not accepted in association negotiation"
            if ticket.kind in REPLACEABLE_KINDS:
                outcome.refused.append((ticket, reason))
            else:
                outcome.failed.append((ticket, None, reason))
            continue
        if not _send_one(assoc, ticket, data_dir, outcome):
            outcome.unsent += pending
            return


def _send_one(
    assoc: Association, ticket: ExportTicket, data_dir: Path, outcome: BatchOutcome
) -> bool:
    """C-STORE one object; False when the association broke (abort or lost response).

    The file is streamed as stored (no decoding and re-encoding) when the peer accepted its
    transfer syntax; otherwise it is read and converted to an accepted one."""
    path = data_dir / ticket.path
    try:
        try:
            status = assoc.send_c_store(path, msg_id=next_message_id())
        except ValueError:  # its own transfer syntax was not accepted: convert
            status = assoc.send_c_store(dcmread(path), msg_id=next_message_id())
    except (OSError, ValueError, AttributeError, RuntimeError) as exc:
        outcome.failed.append((ticket, None, f"send failed: {exc}"))
        return assoc.is_established
    code = getattr(status, "Status", None)
    if code is None:
        outcome.failed.append((ticket, None, "no response (aborted or timed out)"))
        return False
    code = int(code)
    if code == 0x0000 or code in WARNING_STATUSES:
        outcome.sent.append((ticket.export_id, code))
        return True
    comment = str(getattr(status, "ErrorComment", "") or "")
    outcome.failed.append((ticket, code, f"refused with status 0x{code:04X} {comment}".strip()))
    return True
