"""The audit trail of people's actions: one ``events`` row per action, naming the user.

Kinds: ``action-export-retry``, ``action-job-requeue``, ``action-verdict``, ``action-promote``.
The message starts with the user's name (never a patient's data: only ids and model names).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import Event, Export, Job, ResultObject


def _study_of_job(session: Session, job_id: int | None) -> int | None:
    if job_id is None:
        return None
    return session.scalar(select(Job.study_id).where(Job.id == job_id))


def job_of_export(session: Session, export_id: int) -> int | None:
    return session.scalar(
        select(ResultObject.job_id)
        .join(Export, Export.result_object_id == ResultObject.id)
        .where(Export.id == export_id)
    )


def record_action(
    sessions: sessionmaker[Session], actor: str, action: str, message: str,
    *, job_id: int | None = None, export_id: int | None = None,
) -> None:
    """Write one audit event: ``action`` by ``actor`` on a job (or one export of a job)."""
    with sessions() as session, session.begin():
        if job_id is None and export_id is not None:
            job_id = job_of_export(session, export_id)
        study_id = _study_of_job(session, job_id)
        if study_id is None:
            job_id = None  # no such job: the message still names it
        session.add(Event(
            study_id=study_id, job_id=job_id,
            kind=f"action-{action}"[:32], message=f"{actor}: {message}"[:2000],
        ))


def actions(sessions: sessionmaker[Session], limit: int = 100) -> list[tuple[str, str, str]]:
    """The newest audit events as (ISO time, kind, message)."""
    with sessions() as session:
        rows = session.execute(
            select(Event.at, Event.kind, Event.message)
            .where(Event.kind.like("action-%"))
            .order_by(Event.id.desc()).limit(limit)
        )
        return [(at.isoformat() + "Z", kind, message) for at, kind, message in rows]
