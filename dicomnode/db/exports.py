"""Export bookkeeping: which result objects are due for which destination, and what happened."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, or_, select
from sqlalchemy.orm import Session, aliased, sessionmaker

from dicomnode.contracts import EventKind
from dicomnode.db.models import Export, ExportState, Job, ResultObject, Study, utcnow
from dicomnode.db.records import add_event
from dicomnode.db.rowcopy import record_from


@dataclass(frozen=True)
class ExportTicket:
    export_id: int
    destination: str
    path: str  # relative to the data directory
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    attempts: int
    series_instance_uid: str = ""
    study_instance_uid: str = ""


OVERLAY = "OVERLAY"


def _ticket(e: Export, r: ResultObject, study_uid: str) -> ExportTicket:
    return record_from(ExportTicket, e, r, export_id=e.id, study_instance_uid=study_uid)


class ExportLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def due(
        self, now: datetime | None = None, limit: int = 64, destination: str | None = None,
        exclude: Sequence[str] | None = None,
    ) -> list[ExportTicket]:
        """Pending exports that are due, SEG and SR first. An overlay object waits while a SEG
        or SR of its job is still pending for the same destination, so a viewer never shows
        the overlay series before the structured results."""
        now = now or utcnow()
        first = aliased(Export)
        first_obj = aliased(ResultObject)
        structured_pending = (
            select(first.id)
            .join(first_obj, first.result_object_id == first_obj.id)
            .where(first_obj.job_id == ResultObject.job_id, first_obj.kind != OVERLAY,
                   first.destination == Export.destination,
                   first.state.in_((ExportState.PENDING, ExportState.SENDING)))
            .exists()
        )
        query = (
            select(Export, ResultObject, Study.study_instance_uid)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
            .join(Job, ResultObject.job_id == Job.id)
            .join(Study, Job.study_id == Study.id)
            .where(Export.state == ExportState.PENDING, Export.next_attempt_at <= now)
            .where(or_(ResultObject.kind != OVERLAY, ~structured_pending))
            .order_by(case((ResultObject.kind == OVERLAY, 1), else_=0), Export.next_attempt_at,
                      Export.id)
            .limit(limit)
        )
        if destination is not None:
            query = query.where(Export.destination == destination)
        if exclude is not None:
            query = query.where(Export.destination.not_in(exclude))
        with self._sessions() as session:
            return [_ticket(e, r, u) for e, r, u in session.execute(query)]

    def _study_of(self, session: Session, export: Export) -> tuple[int, int]:
        obj = session.get_one(ResultObject, export.result_object_id)
        job = session.get_one(Job, obj.job_id)
        return job.study_id, job.id

    def sent(self, export_id: int, status: int, confirm_after_s: float | None = None) -> None:
        self.sent_many([(export_id, status)], confirm_after_s)

    def sent_many(
        self, outcomes: Sequence[tuple[int, int]], confirm_after_s: float | None = None
    ) -> None:
        """Record successful C-STORE/STOW responses in one transaction. With
        ``confirm_after_s`` the PACS is asked to confirm that long after; None: no check."""
        if not outcomes:
            return
        now = utcnow()
        check_at = None if confirm_after_s is None else now + timedelta(seconds=confirm_after_s)
        with self._sessions() as session, session.begin():
            for export_id, status in outcomes:
                export = session.get_one(Export, export_id)
                export.state = ExportState.SENT
                export.attempts += 1
                export.last_status = status
                export.last_error = ""
                export.sent_at = now
                export.check_at = check_at
                export.confirm_attempts = 0
                study_id, job_id = self._study_of(session, export)
                obj = session.get_one(ResultObject, export.result_object_id)
                add_event(
                    session, study_id, EventKind.EXPORTED,
                    f"{obj.kind} {obj.sop_instance_uid} to {export.destination}", job_id=job_id,
                )

    def refused(self, export_id: int, reason: str) -> int:
        """The destination does not take this object's SOP class: record it, and queue the
        job's overlay objects for that destination instead; return how many were queued."""
        with self._sessions() as session, session.begin():
            export = session.get_one(Export, export_id)
            export.state = ExportState.REFUSED
            export.attempts += 1
            export.last_error = f"{reason}; the overlay series is sent instead"[:2000]
            obj = session.get_one(ResultObject, export.result_object_id)
            study_id, job_id = self._study_of(session, export)
            have = set(session.scalars(
                select(Export.result_object_id).where(Export.destination == export.destination)
            ))
            overlays = session.scalars(
                select(ResultObject).where(ResultObject.job_id == job_id,
                                           ResultObject.kind == OVERLAY)
            ).all()
            added = [o for o in overlays if o.id not in have]
            for o in added:
                session.add(Export(result_object_id=o.id, destination=export.destination))
            add_event(
                session, study_id, EventKind.OUTPUT_CHOICE,
                f"{export.destination} refused {obj.kind} ({reason[:200]}); "
                f"sending the overlay series instead ({len(added)} more objects queued)",
                job_id=job_id,
            )
            return len(added)

    def attempt_failed(
        self, export_id: int, status: int | None, error: str, *, max_attempts: int,
        backoff_initial_s: float, backoff_max_s: float,
    ) -> ExportState:
        """Schedule the next try with exponential backoff, or fail for good after the last."""
        now = utcnow()
        with self._sessions() as session, session.begin():
            export = session.get_one(Export, export_id)
            export.attempts += 1
            export.last_status = status
            export.last_error = error[:2000]
            study_id, job_id = self._study_of(session, export)
            if export.attempts >= max_attempts:
                export.state = ExportState.FAILED
                add_event(
                    session, study_id, EventKind.EXPORT_FAILED,
                    f"to {export.destination} after {export.attempts} attempts: {error[:300]}",
                    job_id=job_id,
                )
            else:
                delay = min(backoff_max_s, backoff_initial_s * 2 ** (export.attempts - 1))
                export.next_attempt_at = now + timedelta(seconds=delay)
                add_event(
                    session, study_id, EventKind.EXPORT_RETRY,
                    f"to {export.destination}, attempt {export.attempts} failed "
                    f"({error[:200]}); next in {delay:.0f} s",
                    job_id=job_id,
                )
            return export.state

    def retry_failed(self, job_id: int, destination: str) -> int:
        """Operator action: send every failed export of ``job_id`` to ``destination`` again
        now; returns how many were queued (0 when none had failed)."""
        with self._sessions() as session, session.begin():
            exports = session.scalars(
                select(Export)
                .join(ResultObject, Export.result_object_id == ResultObject.id)
                .where(ResultObject.job_id == job_id, Export.destination == destination,
                       Export.state == ExportState.FAILED)
            ).all()
            if not exports:
                return 0
            now = utcnow()
            for export in exports:
                _requeue(export, now)
            study_id, _ = self._study_of(session, exports[0])
            add_event(session, study_id, EventKind.EXPORT_REQUEUED,
                      f"{len(exports)} to {destination} by operator", job_id=job_id)
            return len(exports)

    def retry(self, export_id: int) -> None:
        """Operator action: send a failed export again now."""
        with self._sessions() as session, session.begin():
            export = session.get_one(Export, export_id)
            _requeue(export, utcnow())
            study_id, job_id = self._study_of(session, export)
            add_event(session, study_id, EventKind.EXPORT_REQUEUED, "by operator", job_id=job_id)


def _requeue(export: Export, now: datetime) -> None:
    """An operator's retry: pending again, due now, with a fresh attempt budget."""
    export.state = ExportState.PENDING
    export.attempts = 0
    export.next_attempt_at = now
