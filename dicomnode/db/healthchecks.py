"""Queries behind ``/healthz``: destinations that fail now, jobs whose worker stopped."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Export, ExportState, Job, JobState


def failing_destinations(session: Session, names: Iterable[str]) -> list[str]:
    """Destinations retrying a failed attempt, or with a failed export newer than their
    newest delivered one (an old failure followed by a success is history, not a fault)."""
    failing = []
    for name in names:
        mine = Export.destination == name
        retrying = session.scalar(
            select(Export.id).where(mine, Export.state == ExportState.PENDING,
                                    Export.attempts > 0).limit(1)
        )
        newest_failed = session.scalar(
            select(func.max(Export.id)).where(mine, Export.state == ExportState.FAILED)
        )
        newest_sent = session.scalar(
            select(func.max(Export.id)).where(mine, Export.state == ExportState.SENT)
        )
        if retrying is not None or (newest_failed or 0) > (newest_sent or 0):
            failing.append(name)
    return failing


def stalled_jobs(session: Session, now: datetime) -> int:
    """Running jobs whose lease expired: their worker stopped renewing it."""
    return session.scalar(
        select(func.count()).select_from(Job)
        .where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
    ) or 0
