"""Confirmed delivery: which sent objects the PACS must still confirm, and what it answered.

An export is ``sent`` when the C-STORE or STOW-RS response says success and ``committed`` only
once the PACS confirms it holds the object (storage commitment or a read-back query). Committed
objects are checked again now and then for a while; one the PACS lost is sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.contracts import EventKind
from dicomnode.db.exports import ExportTicket, _ticket
from dicomnode.db.models import Export, ExportState, Job, ResultObject, Study, utcnow
from dicomnode.db.records import add_event


class ConfirmationLog:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def to_check(
        self, destination: str, verify_for_s: float, now: datetime | None = None,
        limit: int = 500,
    ) -> list[ExportTicket]:
        """Sent objects due for confirmation, and committed ones due for a new check."""
        now = now or utcnow()
        query = (
            select(Export, ResultObject, Study.study_instance_uid)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
            .join(Job, ResultObject.job_id == Job.id)
            .join(Study, Job.study_id == Study.id)
            .where(Export.destination == destination, Export.check_at <= now)
            .where(or_(
                Export.state == ExportState.SENT,
                and_(Export.state == ExportState.COMMITTED,
                     Export.committed_at >= now - timedelta(seconds=verify_for_s)),
            ))
            .order_by(Export.check_at, Export.id)
            .limit(limit)
        )
        with self._sessions() as session:
            return [_ticket(e, r, u) for e, r, u in session.execute(query)]

    def committed(self, export_ids: Sequence[int], how: str, verify_after_s: float) -> None:
        """The PACS holds these objects. ``verify_after_s`` > 0 schedules the next check."""
        if not export_ids:
            return
        now = utcnow()
        check_at = now + timedelta(seconds=verify_after_s) if verify_after_s > 0 else None
        with self._sessions() as session, session.begin():
            newly: dict[tuple[int, int, str], int] = {}
            for export in session.scalars(select(Export).where(Export.id.in_(export_ids))):
                if export.state == ExportState.SENT:
                    export.committed_at = now
                    obj = session.get_one(ResultObject, export.result_object_id)
                    job = session.get_one(Job, obj.job_id)
                    key = (job.study_id, job.id, export.destination)
                    newly[key] = newly.get(key, 0) + 1
                export.state = ExportState.COMMITTED
                export.check_at = check_at
                export.confirm_attempts = 0
            for (study_id, job_id, destination), count in newly.items():
                add_event(session, study_id, EventKind.EXPORT_COMMITTED,
                          f"{count} objects confirmed by {destination} ({how})", job_id=job_id)

    def lost(self, export_ids: Sequence[int], reason: str) -> None:
        """The PACS does not hold these objects (any more): send them again now."""
        if not export_ids:
            return
        now = utcnow()
        with self._sessions() as session, session.begin():
            for export in session.scalars(select(Export).where(Export.id.in_(export_ids))):
                obj = session.get_one(ResultObject, export.result_object_id)
                job = session.get_one(Job, obj.job_id)
                export.state = ExportState.PENDING
                export.attempts = 0
                export.next_attempt_at = now
                export.check_at = None
                export.committed_at = None
                export.last_error = reason[:2000]
                add_event(session, job.study_id, EventKind.EXPORT_LOST,
                          f"{obj.kind} {obj.sop_instance_uid} not held by {export.destination} "
                          f"({reason[:200]}); sending again", job_id=job.id)

    def unconfirmed(
        self, export_ids: Sequence[int], error: str, *, max_attempts: int, retry_after_s: float
    ) -> None:
        """No answer could be had: ask again later. After ``max_attempts`` the export stays
        ``sent`` (delivered, never confirmed) with the reason, and is not asked about again."""
        now = utcnow()
        with self._sessions() as session, session.begin():
            for export in session.scalars(select(Export).where(Export.id.in_(export_ids))):
                export.confirm_attempts += 1
                export.last_error = f"not confirmed: {error}"[:2000]
                if export.confirm_attempts < max_attempts:
                    delay = retry_after_s * 2 ** min(export.confirm_attempts, 10)
                    export.check_at = now + timedelta(seconds=delay)
                    continue
                export.check_at = None
                if export.state == ExportState.SENT:
                    obj = session.get_one(ResultObject, export.result_object_id)
                    job = session.get_one(Job, obj.job_id)
                    add_event(session, job.study_id, EventKind.EXPORT_UNCONFIRMED,
                              f"{obj.kind} {obj.sop_instance_uid}: {export.destination} sent "
                              f"but never confirmed ({error[:200]})", job_id=job.id)
