"""Delivery of result objects: one worker thread per destination, with retries and backoff.

Each destination has its own thread, so a slow or hung PACS never delays another. A worker
sends SEG and SR before the overlay series, splits a batch over up to ``max_associations``
parallel associations (or STOW-RS requests), and then asks the destination to confirm what it
sent (see :mod:`dicomnode.delivering.confirming`). Objects keep their SOP Instance UIDs across
retries, so a PACS that already stored one simply keeps it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dicomnode.config import Destination, ExportSettings
from dicomnode.db.confirmations import ConfirmationLog
from dicomnode.db.exports import OVERLAY, ExportLog, ExportTicket
from dicomnode.delivering.commitment import CommitmentTracker
from dicomnode.delivering.confirming import Confirmer
from dicomnode.delivering.dimse import BatchOutcome, store_batch
from dicomnode.delivering.stow import stow_batch

log = logging.getLogger(__name__)

BATCH_PER_ASSOCIATION = 64  # objects fetched per round and association
STOW_OBJECTS_PER_REQUEST = 16


class DestinationWorker:
    """Sends everything due for one destination, then confirms what was sent."""

    def __init__(
        self, destination: Destination, exports: ExportLog, settings: ExportSettings, *,
        data_dir: Path, calling_ae_title: str, confirmations: ConfirmationLog | None = None,
        commitments: CommitmentTracker | None = None,
    ) -> None:
        self.destination = destination
        self._exports = exports
        self._settings = settings
        self._data_dir = data_dir
        self._calling = calling_ae_title
        self._pool = ThreadPoolExecutor(destination.max_associations,
                                        thread_name_prefix=f"export-{destination.name}")
        self._confirm = destination.confirm != "none" and confirmations is not None
        self._confirmer = (
            Confirmer(destination, settings, calling_ae_title, confirmations, commitments)
            if confirmations is not None and self._confirm else None
        )

    def run_once(self) -> int:
        """One round; returns the number of objects delivered."""
        limit = BATCH_PER_ASSOCIATION * self.destination.max_associations
        tickets = self._exports.due(limit=limit, destination=self.destination.name)
        structured = [t for t in tickets if t.kind != OVERLAY]
        # SEG and SR go first; the overlay objects come in the next round.
        delivered = self._send(structured or tickets)
        if self._confirmer is not None:
            try:
                self._confirmer.run_once()
            except Exception:  # a confirmation problem must not stop delivery
                log.exception("confirmation round for %s failed", self.destination.name)
        return delivered

    def _send(self, tickets: Sequence[ExportTicket]) -> int:
        if not tickets:
            return 0
        chunks = self._chunks(tickets)
        outcomes = list(self._pool.map(self._send_chunk, chunks))
        return sum(self._record(o) for o in outcomes)

    def _chunks(self, tickets: Sequence[ExportTicket]) -> list[list[ExportTicket]]:
        if self.destination.type == "stow":
            size = STOW_OBJECTS_PER_REQUEST
            return [list(tickets[i:i + size]) for i in range(0, len(tickets), size)]
        n = max(1, min(self.destination.max_associations, len(tickets) // 8 or 1))
        return [list(tickets[i::n]) for i in range(n)]

    def _send_chunk(self, tickets: list[ExportTicket]) -> BatchOutcome:
        if self.destination.type == "stow":
            return stow_batch(self.destination, self._settings, self._data_dir, tickets)
        outcome = BatchOutcome()
        size = max(1, self._settings.instances_per_association)
        for i in range(0, len(tickets), size):
            part = store_batch(self.destination, self._settings, self._calling, self._data_dir,
                               tickets[i:i + size])
            outcome.sent += part.sent
            outcome.failed += part.failed
            outcome.refused += part.refused
            outcome.unsent += part.unsent  # left pending: sent again in the next round
        return outcome

    def _record(self, outcome: BatchOutcome) -> int:
        confirm_after = self._settings.confirm_after_s if self._confirm else None
        self._exports.sent_many(outcome.sent, confirm_after)
        for ticket, status, error in outcome.failed:
            self._failed(ticket, status, error)
        for ticket, reason in outcome.refused:
            added = self._exports.refused(ticket.export_id, reason)
            log.warning("%s refused %s %s; %d overlay objects queued instead",
                        self.destination.name, ticket.kind, ticket.sop_instance_uid, added)
        if outcome.sent:
            log.info("exported %d objects to %s", len(outcome.sent), self.destination.name)
        return len(outcome.sent)

    def _failed(self, ticket: ExportTicket, status: int | None, error: str) -> None:
        state = self._exports.attempt_failed(
            ticket.export_id, status, error,
            max_attempts=self._settings.max_attempts,
            backoff_initial_s=self._settings.backoff_initial_s,
            backoff_max_s=self._settings.backoff_max_s,
        )
        level = logging.ERROR if state.value == "failed" else logging.WARNING
        log.log(level, "export %d of %s %s to %s: %s (%s)", ticket.export_id, ticket.kind,
                ticket.sop_instance_uid, ticket.destination, error, state.value)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                busy = self.run_once() > 0
            except Exception:  # keep exporting; log the surprise
                log.exception("export round for %s failed", self.destination.name)
                busy = False
            if not busy:
                stop.wait(self._settings.poll_interval_s)
        self._pool.shutdown(wait=False, cancel_futures=True)


class Exporter:
    """The destination workers, and the objects left for destinations no longer configured."""

    def __init__(
        self, exports: ExportLog, destinations: Sequence[Destination],
        settings: ExportSettings, *, data_dir: Path, calling_ae_title: str,
        confirmations: ConfirmationLog | None = None,
        commitments: CommitmentTracker | None = None,
    ) -> None:
        self._exports = exports
        self._settings = settings
        self.workers = {
            d.name: DestinationWorker(
                d, exports, settings, data_dir=data_dir, calling_ae_title=calling_ae_title,
                confirmations=confirmations, commitments=commitments,
            )
            for d in destinations
        }

    def run_once(self) -> int:
        """One round for every destination, in parallel; the number of objects delivered."""
        self._fail_orphans()
        results: list[int] = [0] * len(self.workers)

        def one(i: int, worker: DestinationWorker) -> None:
            results[i] = worker.run_once()

        threads = [threading.Thread(target=one, args=(i, w))
                   for i, w in enumerate(self.workers.values())]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(results)

    def _fail_orphans(self) -> None:
        for t in self._exports.due(exclude=tuple(self.workers)):
            self._exports.attempt_failed(
                t.export_id, None, f"destination {t.destination!r} is no longer configured",
                max_attempts=1, backoff_initial_s=0, backoff_max_s=0,
            )

    def run(self, stop: threading.Event) -> None:
        threads = [threading.Thread(target=w.run, args=(stop,), name=f"export-{name}",
                                    daemon=True) for name, w in self.workers.items()]
        for t in threads:
            t.start()
        while not stop.wait(max(5.0, self._settings.poll_interval_s)):
            try:
                self._fail_orphans()
            except Exception:
                log.exception("export bookkeeping failed")
        for t in threads:
            t.join(timeout=self._settings.dimse_timeout_s + 5)
