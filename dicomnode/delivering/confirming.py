"""Confirmed delivery for one destination: storage commitment where the PACS offers it,
otherwise (and when a commitment goes unanswered) a read-back query of the series."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from dicomnode.config import Destination, ExportSettings
from dicomnode.db.confirmations import ConfirmationLog
from dicomnode.db.exports import ExportTicket
from dicomnode.delivering.commitment import (
    CommitmentError,
    CommitmentTracker,
    CommitmentUnsupportedError,
)
from dicomnode.delivering.readback import ReadBackError, held_instances

log = logging.getLogger(__name__)


class Confirmer:
    def __init__(
        self, destination: Destination, settings: ExportSettings, calling_ae_title: str,
        log_: ConfirmationLog, tracker: CommitmentTracker | None,
    ) -> None:
        self._dest = destination
        self._settings = settings
        self._calling = calling_ae_title
        self._log = log_
        self._tracker = tracker
        # None: not known yet; False: the destination refused the commitment context.
        self._commitment: bool | None = None if destination.confirm != "query" else False

    @property
    def _use_commitment(self) -> bool:
        return (self._tracker is not None and self._dest.type == "dicom"
                and self._commitment is not False)

    def run_once(self) -> int:
        """Handle reports and due checks; return how many objects were confirmed or lost."""
        done = self._take_reports()
        if self._tracker is not None:
            late = self._tracker.take_expired(self._dest.name)
            if late:
                log.warning("%s: %d commitments unanswered; reading back instead",
                            self._dest.name, len(late))
        awaiting = self._tracker.awaiting(self._dest.name) if self._tracker else set()
        tickets = [t for t in self._log.to_check(self._dest.name, self._settings.verify_for_s)
                   if t.export_id not in awaiting]
        if not tickets:
            return done
        if self._use_commitment and not _late_ids_in(tickets, late if self._tracker else []):
            if self._request_commitment(tickets):
                return done
        return done + self._read_back(tickets)

    def _take_reports(self) -> int:
        if self._tracker is None:
            return 0
        count = 0
        for report in self._tracker.take_reports(self._dest.name):
            self._log.committed(report.committed, "storage commitment",
                                self._settings.verify_interval_s)
            self._log.lost(report.failed, "storage commitment reported it as failed")
            count += len(report.committed) + len(report.failed)
        return count

    def _request_commitment(self, tickets: Sequence[ExportTicket]) -> bool:
        assert self._tracker is not None
        try:
            self._tracker.request(self._dest, self._settings, self._calling, tickets)
        except CommitmentUnsupportedError:
            if self._dest.confirm == "commitment":
                self._unconfirmed(tickets, "destination does not offer storage commitment")
                return True
            log.info("%s does not offer storage commitment; confirming by query",
                     self._dest.name)
            self._commitment = False
            return False
        except CommitmentError as exc:
            if self._dest.confirm == "commitment":
                self._unconfirmed(tickets, str(exc))
                return True
            log.warning("%s: storage commitment failed (%s); confirming by query from now on",
                        self._dest.name, exc)
            self._commitment = False
            return False
        self._commitment = True
        return True

    def _read_back(self, tickets: Sequence[ExportTicket]) -> int:
        by_series: dict[tuple[str, str], list[ExportTicket]] = defaultdict(list)
        for t in tickets:
            by_series[(t.study_instance_uid, t.series_instance_uid)].append(t)
        count = 0
        for (study_uid, series_uid), group in by_series.items():
            try:
                held = held_instances(self._dest, self._settings, self._calling, study_uid,
                                      series_uid)
            except ReadBackError as exc:
                self._unconfirmed(group, str(exc))
                continue
            self._log.committed([t.export_id for t in group if t.sop_instance_uid in held],
                                "read-back query", self._settings.verify_interval_s)
            self._log.lost([t.export_id for t in group if t.sop_instance_uid not in held],
                           "read-back query did not find it")
            count += len(group)
        return count

    def _unconfirmed(self, tickets: Sequence[ExportTicket], error: str) -> None:
        log.warning("%s: cannot confirm %d objects: %s", self._dest.name, len(tickets), error)
        self._log.unconfirmed(
            [t.export_id for t in tickets], error,
            max_attempts=self._settings.max_confirm_attempts,
            retry_after_s=max(1.0, self._settings.confirm_after_s),
        )


def _late_ids_in(tickets: Sequence[ExportTicket], late: Sequence[int]) -> bool:
    """True when some of ``tickets`` already went unanswered by storage commitment."""
    return bool(set(late) & {t.export_id for t in tickets})
