"""Export bookkeeping: which result objects are due for which destination, and what happened."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.contracts import EventKind
from dicomnode.db.models import Export, ExportState, Job, ResultObject, utcnow
from dicomnode.db.records import add_event


@dataclass(frozen=True)
class ExportTicket:
    export_id: int
    destination: str
    path: str  # relative to the data directory
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    attempts: int


class ExportLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def due(self, now: datetime | None = None, limit: int = 64) -> list[ExportTicket]:
        now = now or utcnow()
        with self._sessions() as session:
            rows = session.execute(
                select(Export, ResultObject)
                .join(ResultObject, Export.result_object_id == ResultObject.id)
                .where(Export.state == ExportState.PENDING, Export.next_attempt_at <= now)
                .order_by(Export.next_attempt_at, Export.id)
                .limit(limit)
            )
            return [
                ExportTicket(
                    export_id=e.id,
                    destination=e.destination,
                    path=r.path,
                    kind=r.kind,
                    sop_class_uid=r.sop_class_uid,
                    sop_instance_uid=r.sop_instance_uid,
                    attempts=e.attempts,
                )
                for e, r in rows
            ]

    def _study_of(self, session: Session, export: Export) -> tuple[int, int]:
        obj = session.get_one(ResultObject, export.result_object_id)
        job = session.get_one(Job, obj.job_id)
        return job.study_id, job.id

    def sent(self, export_id: int, status: int) -> None:
        with self._sessions() as session, session.begin():
            export = session.get_one(Export, export_id)
            export.state = ExportState.SENT
            export.attempts += 1
            export.last_status = status
            export.last_error = ""
            export.sent_at = utcnow()
            study_id, job_id = self._study_of(session, export)
            obj = session.get_one(ResultObject, export.result_object_id)
            add_event(
                session, study_id, EventKind.EXPORTED,
                f"{obj.kind} {obj.sop_instance_uid} to {export.destination}", job_id=job_id,
            )

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
