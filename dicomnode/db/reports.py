"""Read-side queries for `dicomnode status` (and later the web app), plus lease recovery."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import (
    Event,
    Export,
    ExportState,
    Job,
    JobState,
    ResultObject,
    Series,
    Study,
    utcnow,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_local_leases(sessions: sessionmaker[Session], hostname: str) -> int:
    """Expire leases held by processes of ``hostname`` that no longer exist."""
    released = 0
    with sessions() as session, session.begin():
        running = session.scalars(
            select(Job).where(Job.state == JobState.RUNNING, Job.lease_owner.like(f"{hostname}:%"))
        ).all()
        for job in running:
            _, _, pid = job.lease_owner.rpartition(":")
            if pid.isdigit() and not _pid_alive(int(pid)):
                session.execute(
                    update(Job).where(Job.id == job.id).values(lease_expires_at=utcnow())
                )
                released += 1
    return released


@dataclass(frozen=True)
class StudyRow:
    study_instance_uid: str
    first_received_at: datetime
    last_received_at: datetime
    series: int
    instances: int
    last_job_state: str
    skipped: tuple[str, ...]


@dataclass(frozen=True)
class JobRow:
    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    state: str
    attempts: int
    created_at: datetime
    finished_at: datetime | None
    error: str
    exports_sent: int
    exports_pending: int
    exports_failed: int


@dataclass(frozen=True)
class ExportRow:
    export_id: int
    job_id: int
    kind: str
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    last_status: int | None
    last_error: str


@dataclass(frozen=True)
class EventRow:
    at: datetime
    kind: str
    message: str
    job_id: int | None


class Reports:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def studies(self, limit: int = 50) -> list[StudyRow]:
        out = []
        with self._sessions() as session:
            for study in session.scalars(
                select(Study).order_by(Study.last_received_at.desc()).limit(limit)
            ):
                series = session.scalars(select(Series).where(Series.study_id == study.id)).all()
                last_job = session.scalars(
                    select(Job.state).where(Job.study_id == study.id).order_by(Job.id.desc())
                ).first()
                out.append(
                    StudyRow(
                        study_instance_uid=study.study_instance_uid,
                        first_received_at=study.first_received_at,
                        last_received_at=study.last_received_at,
                        series=len(series),
                        instances=sum(s.instance_count for s in series),
                        last_job_state=last_job.value if last_job else "-",
                        skipped=tuple(
                            f"{s.series_instance_uid}: {s.skip_reason}"
                            for s in series
                            if s.state.value == "skipped"
                        ),
                    )
                )
        return out

    def jobs(self, limit: int = 50) -> list[JobRow]:
        out = []
        with self._sessions() as session:
            rows = session.execute(
                select(Job, Study.study_instance_uid, Series.series_instance_uid)
                .join(Study, Job.study_id == Study.id)
                .join(Series, Job.series_id == Series.id)
                .order_by(Job.id.desc())
                .limit(limit)
            ).all()
            for job, study_uid, series_uid in rows:
                counts = dict(
                    session.execute(
                        select(Export.state, func.count())
                        .join(ResultObject, Export.result_object_id == ResultObject.id)
                        .where(ResultObject.job_id == job.id)
                        .group_by(Export.state)
                    ).all()
                )
                out.append(
                    JobRow(
                        job_id=job.id,
                        study_instance_uid=study_uid,
                        series_instance_uid=series_uid,
                        state=job.state.value,
                        attempts=job.attempts,
                        created_at=job.created_at,
                        finished_at=job.finished_at,
                        error=job.error,
                        exports_sent=counts.get(ExportState.SENT, 0),
                        exports_pending=counts.get(ExportState.PENDING, 0),
                        exports_failed=counts.get(ExportState.FAILED, 0),
                    )
                )
        return out

    def exports(self, states: tuple[ExportState, ...] = (), limit: int = 100) -> list[ExportRow]:
        with self._sessions() as session:
            query = (
                select(Export, ResultObject)
                .join(ResultObject, Export.result_object_id == ResultObject.id)
                .order_by(Export.id.desc())
                .limit(limit)
            )
            if states:
                query = query.where(Export.state.in_(states))
            return [
                ExportRow(
                    export_id=e.id,
                    job_id=r.job_id,
                    kind=r.kind,
                    sop_instance_uid=r.sop_instance_uid,
                    destination=e.destination,
                    state=e.state.value,
                    attempts=e.attempts,
                    last_status=e.last_status,
                    last_error=e.last_error,
                )
                for e, r in session.execute(query).all()
            ]

    def timeline(self, study_instance_uid: str) -> list[EventRow]:
        with self._sessions() as session:
            study_id = session.scalar(
                select(Study.id).where(Study.study_instance_uid == study_instance_uid)
            )
            if study_id is None:
                return []
            return [
                EventRow(e.at, e.kind, e.message, e.job_id)
                for e in session.scalars(
                    select(Event).where(Event.study_id == study_id).order_by(Event.id)
                )
            ]

    def counts(self) -> dict[str, int]:
        """Totals for a one-line overview and for metrics."""
        with self._sessions() as session:
            result: dict[str, int] = {
                "studies": session.scalar(select(func.count()).select_from(Study)) or 0,
                "instances": session.scalar(select(func.sum(Series.instance_count))) or 0,
            }
            for job_state, n in session.execute(
                select(Job.state, func.count()).group_by(Job.state)
            ).all():
                result[f"jobs_{job_state.value}"] = n
            for export_state, n in session.execute(
                select(Export.state, func.count()).group_by(Export.state)
            ).all():
                result[f"exports_{export_state.value}"] = n
            return result
