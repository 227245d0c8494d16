"""C-STORE SCU to the configured destinations, with retries, backoff and a visible failed state.

pynetdicom 3.0.4's SCU can occasionally lose a C-STORE response (then a DIMSE timeout and an
abort): an abort or empty status is treated as retryable and the remaining objects are sent on
a new association. Objects keep their SOP Instance UIDs across retries, so a PACS that already
stored one simply keeps it.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.association import Association

from dicomnode.config import Destination, ExportSettings
from dicomnode.db.exports import ExportLog, ExportTicket
from dicomnode.receiving.scp import set_tcp_nodelay

log = logging.getLogger(__name__)

WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})  # stored, with a remark
FALLBACK_TRANSFER_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
_message_ids = itertools.count(1)


def _next_message_id() -> int:
    return next(_message_ids) % 0xFFFF + 1


class Exporter:
    def __init__(
        self,
        exports: ExportLog,
        destinations: Sequence[Destination],
        settings: ExportSettings,
        *,
        data_dir: Path,
        calling_ae_title: str,
    ) -> None:
        self._exports = exports
        self._destinations = {d.name: d for d in destinations}
        self._settings = settings
        self._data_dir = data_dir
        self._calling = calling_ae_title

    def run_once(self) -> int:
        """Send everything that is due; return the number of objects delivered."""
        by_destination: dict[str, list[ExportTicket]] = defaultdict(list)
        for ticket in self._exports.due():
            by_destination[ticket.destination].append(ticket)
        delivered = 0
        for name, tickets in by_destination.items():
            destination = self._destinations.get(name)
            if destination is None:
                for t in tickets:
                    self._failed(t, None, f"destination {name!r} is no longer configured")
                continue
            delivered += self._send_to(destination, tickets)
        return delivered

    def _failed(self, ticket: ExportTicket, status: int | None, error: str) -> None:
        state = self._exports.attempt_failed(
            ticket.export_id,
            status,
            error,
            max_attempts=self._settings.max_attempts,
            backoff_initial_s=self._settings.backoff_initial_s,
            backoff_max_s=self._settings.backoff_max_s,
        )
        level = logging.ERROR if state.value == "failed" else logging.WARNING
        log.log(
            level,
            "export %d of %s %s to %s: %s (%s)",
            ticket.export_id, ticket.kind, ticket.sop_instance_uid, ticket.destination, error,
            state.value,
        )

    def _associate(self, destination: Destination, tickets: Sequence[ExportTicket]) -> Association:
        ae = AE(ae_title=self._calling)
        ae.dimse_timeout = self._settings.dimse_timeout_s
        ae.acse_timeout = self._settings.dimse_timeout_s
        ae.network_timeout = self._settings.dimse_timeout_s
        contexts: set[tuple[str, str]] = set()
        for t in tickets:
            ts = self._transfer_syntax(t)
            contexts.add((t.sop_class_uid, ts))
            for fallback in FALLBACK_TRANSFER_SYNTAXES:
                contexts.add((t.sop_class_uid, fallback))
        # One context per (SOP class, transfer syntax): the peer cannot pick a syntax we did
        # not mean for that object.
        for sop_class, ts in sorted(contexts)[:128]:
            ae.add_requested_context(sop_class, ts)
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if assoc.is_established:
            set_tcp_nodelay(getattr(assoc.dul.socket, "socket", None))
        return assoc

    def _transfer_syntax(self, ticket: ExportTicket) -> str:
        path = self._data_dir / ticket.path
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(meta.file_meta.TransferSyntaxUID)

    def _send_to(self, destination: Destination, tickets: list[ExportTicket]) -> int:
        delivered = 0
        pending = list(tickets)
        while pending:
            try:
                assoc = self._associate(destination, pending)
            except (OSError, ValueError) as exc:
                for t in pending:
                    self._failed(t, None, f"cannot associate: {exc}")
                return delivered
            if not assoc.is_established:
                reason = "association rejected" if assoc.is_rejected else "association failed"
                for t in pending:
                    self._failed(t, None, f"{reason} by {destination.ae_title}@"
                                 f"{destination.host}:{destination.port}")
                return delivered
            broken = False
            try:
                while pending:
                    ticket = pending.pop(0)
                    outcome = self._send_one(assoc, ticket)
                    if outcome is None:  # abort or lost response: retry on a new association
                        broken = True
                        break
                    delivered += outcome
            finally:
                if assoc.is_established:
                    assoc.release()
            if not broken:
                break
        return delivered

    def _send_one(self, assoc: Association, ticket: ExportTicket) -> int | None:
        try:
            ds = dcmread(self._data_dir / ticket.path)
        except (OSError, ValueError) as exc:
            self._failed(ticket, None, f"cannot read result file: {exc}")
            return 0
        try:
            status = assoc.send_c_store(ds, msg_id=_next_message_id())
        except (OSError, ValueError, RuntimeError) as exc:
            self._failed(ticket, None, f"send failed: {exc}")
            return 0
        code = getattr(status, "Status", None)
        if code is None:
            self._failed(ticket, None, "no response (aborted or timed out)")
            return None
        code = int(code)
        if code == 0x0000 or code in WARNING_STATUSES:
            self._exports.sent(ticket.export_id, code)
            log.info(
                "exported %s %s to %s (status 0x%04X)",
                ticket.kind, ticket.sop_instance_uid, ticket.destination, code,
            )
            return 1
        comment = str(getattr(status, "ErrorComment", "") or "")
        self._failed(ticket, code, f"refused with status 0x{code:04X} {comment}".strip())
        return 0

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self._settings.poll_interval_s):
            try:
                self.run_once()
            except Exception:  # keep exporting other objects; log the surprise
                log.exception("export round failed")
