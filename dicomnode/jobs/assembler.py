"""Decides when a study is complete, chooses its series, and queues exactly one job for it.

A study is ready when no instance of it has arrived for the quiet period (several
associations per study are fine as long as the gaps are shorter), or earlier, when it came from
a configured source PACS whose instance counts it matches (see ``expected_counts``). If the
chosen series has gaps in its InstanceNumbers, the assembler waits up to
``max_wait_for_missing_s`` more for the missing slices before it analyses what it has. A study
whose chosen series is unchanged since an earlier job (same instances, same pipeline) is not
processed again, unless that job failed for good: a study re-sent after such a failure (new
instances, or the same ones again) queues the failed job once more with fresh attempts.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings, Source
from dicomnode.contracts import EventKind
from dicomnode.db import studies as db
from dicomnode.db.models import JobState, SeriesState, utcnow
from dicomnode.db.records import add_event
from dicomnode.jobs.expected_counts import CountQueryError, compare, expected_counts
from dicomnode.jobs.selection import SeriesAssessment, choose_series

log = logging.getLogger(__name__)


def input_fingerprint(sop_uids: tuple[str, ...], pipeline_identity: str) -> str:
    """Identify a job's exact input: the set of instances and the pipeline that reads them."""
    digest = hashlib.sha256()
    for uid in sorted(sop_uids):
        digest.update(uid.encode("ascii") + b"\n")
    digest.update(pipeline_identity.encode("utf-8"))
    return digest.hexdigest()


def pipeline_identity(settings: Settings) -> str:
    p = settings.pipeline
    return f"{p.processor}|{p.lung_segmentation}|{p.classifier}|{p.localize_lesions}"


class Assembler:
    """Runs ``evaluate_due`` periodically in a thread of the main process."""

    def __init__(self, sessions: sessionmaker[Session], settings: Settings) -> None:
        self._sessions = sessions
        self._settings = settings
        self._identity = pipeline_identity(settings)
        self._waiting: set[int] = set()  # studies waiting for missing instances (logged once)
        self._sources = {src.ae_title: src for src in settings.sources}
        self._asked: dict[int, datetime] = {}  # study id -> last_received_at when last asked

    def evaluate_due(self, now: datetime | None = None) -> list[int]:
        """Evaluate every study that went quiet; return the ids of the jobs queued."""
        now = now or utcnow()
        queued = self._complete_by_counts(now)
        quiet_since = now - timedelta(seconds=self._settings.node.quiet_period_s)
        with self._sessions() as session:
            due = db.studies_due(session, quiet_since)
        for study_id in due:
            with self._sessions() as session, session.begin():
                job_id = self._evaluate(session, study_id, now)
            if job_id is not None:
                queued.append(job_id)
        return queued

    def _complete_by_counts(self, now: datetime) -> list[int]:
        """Studies from a [[sources]] PACS that went idle: complete those whose series hold
        as many instances as the PACS reports; the others wait for the quiet period."""
        if not self._sources:
            return []
        idle_since = now - timedelta(seconds=self._settings.node.expected_counts_after_s)
        with self._sessions() as session:
            idle = db.idle_studies_from(session, idle_since, list(self._sources))
        self._asked = {sid: at for sid, at in self._asked.items() if any(sid == i[0] for i in idle)}
        queued: list[int] = []
        for study_id, study_uid, aet, last_received in idle:
            if self._asked.get(study_id) == last_received:
                continue  # asked already; nothing arrived since
            self._asked[study_id] = last_received
            job_id = self._check_counts(study_id, study_uid, self._sources[aet], now)
            if job_id is not None:
                queued.append(job_id)
        return queued

    def _check_counts(self, study_id: int, study_uid: str, source: Source, now: datetime
                      ) -> int | None:
        try:
            expected = expected_counts(source, self._settings.node.ae_title, study_uid)
        except CountQueryError as exc:
            log.warning("study %s: expected counts unavailable: %s", study_uid, exc)
            with self._sessions() as session, session.begin():
                add_event(session, study_id, EventKind.COUNTS_UNAVAILABLE,
                          f"{exc}; waiting for the quiet period")
            return None
        with self._sessions() as session:
            check = compare(expected, db.instance_counts(session, study_id))
        if not check.matched:
            log.info("study %s: %s; waiting", study_uid, check.detail)
            return None
        with self._sessions() as session, session.begin():
            add_event(session, study_id, EventKind.COUNTS_MATCHED, f"{source.name}: {check.detail}")
            return self._evaluate(session, study_id, now)

    def _still_waiting(
        self, session: Session, study_id: int, chosen: SeriesAssessment, waited_s: float
    ) -> bool:
        """True while the chosen series may still receive its missing instance numbers (said
        once on the timeline); after the wait, say it is analysed without them."""
        missing = ", ".join(str(n) for n in chosen.missing_instance_numbers[:20])
        if waited_s < self._settings.node.max_wait_for_missing_s:
            if study_id not in self._waiting:
                self._waiting.add(study_id)
                add_event(
                    session, study_id, EventKind.WAITING,
                    f"series {chosen.series_instance_uid} lacks instance numbers {missing}",
                )
            return True
        add_event(
            session, study_id, EventKind.INCOMPLETE,
            f"analysing series {chosen.series_instance_uid} without instances {missing}",
        )
        return False

    def _evaluate(self, session: Session, study_id: int, now: datetime) -> int | None:
        snap = db.load_study(session, study_id)
        selection = choose_series(snap.candidates, self._settings.selection)
        for skipped in selection.skipped:
            if db.set_series_state(
                session, snap.series_ids[skipped.series_instance_uid], SeriesState.SKIPPED,
                skipped.reason,
            ):
                add_event(
                    session, study_id, EventKind.SERIES_SKIPPED,
                    f"series {skipped.series_instance_uid}: {skipped.reason}",
                )
        chosen = selection.chosen
        if chosen is None:
            add_event(
                session, study_id, EventKind.NO_SERIES, "no analysable axial CT series in study"
            )
            log.info("study %s: no analysable series", snap.study_instance_uid)
            db.mark_evaluated(session, study_id, snap.last_received_at)
            return None
        if chosen.missing_instance_numbers and self._still_waiting(
            session, study_id, chosen, (now - snap.last_received_at).total_seconds()
        ):
            return None
        self._waiting.discard(study_id)
        series_id = snap.series_ids[chosen.series_instance_uid]
        sop_uids = snap.sop_uids[chosen.series_instance_uid]
        db.set_series_state(session, series_id, SeriesState.SELECTED, chosen.reason)
        db.mark_evaluated(session, study_id, snap.last_received_at)
        fingerprint = input_fingerprint(sop_uids, self._identity)
        earlier = db.job_with_fingerprint(session, fingerprint)
        if earlier is not None and earlier.state == JobState.FAILED:
            log.info("study %s re-sent; failed job %d queued again",
                     snap.study_instance_uid, earlier.id)
            return db.requeue_failed(session, earlier)
        if earlier is not None:
            add_event(
                session, study_id, EventKind.UNCHANGED,
                f"series {chosen.series_instance_uid} unchanged since job {earlier.id}; "
                "not processed again",
                job_id=earlier.id,
            )
            log.info("study %s unchanged since job %d", snap.study_instance_uid, earlier.id)
            return None
        add_event(
            session, study_id, EventKind.STUDY_COMPLETE,
            f"series {chosen.series_instance_uid} chosen: {chosen.reason}",
        )
        job_id = db.enqueue_job(session, study_id, series_id, fingerprint, len(sop_uids))
        log.info(
            "study %s complete; job %d queued for series %s",
            snap.study_instance_uid, job_id, chosen.series_instance_uid,
        )
        return job_id

    def run(self, stop: threading.Event, interval_s: float) -> None:
        while not stop.wait(interval_s):
            try:
                self.evaluate_due()
            except Exception:  # keep the node up; the next round retries
                log.exception("assembler round failed")
