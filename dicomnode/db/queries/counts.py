"""Totals for the dashboard and the CLI, and the figures behind /metrics."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Event, Export, ExportState, Instance, Job, JobState, Series, Study
from dicomnode.db.queries.views import zero_states


def totals(session: Session) -> dict[str, Any]:
    """Studies, series, instances, jobs by state and exports by state (every state present)."""
    jobs = zero_states(JobState)
    for job_state_, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        jobs[job_state_.value] = n
    exports = zero_states(ExportState)
    for export_state_, n in session.execute(
        select(Export.state, func.count()).group_by(Export.state)
    ):
        exports[export_state_.value] = n
    return {
        "studies": session.scalar(select(func.count()).select_from(Study)) or 0,
        "series": session.scalar(select(func.count()).select_from(Series)) or 0,
        "instances": session.scalar(select(func.count()).select_from(Instance)) or 0,
        "jobs": jobs,
        "exports": exports,
    }


@dataclass(frozen=True)
class FinishedJob:
    job_id: int
    started_at: datetime | None
    finished_at: datetime
    summary: dict[str, Any] | None


def event_counts(session: Session, kinds: Collection[str]) -> dict[str, int]:
    """How many events of each kind were ever recorded (0 for kinds never seen)."""
    counts = dict.fromkeys(kinds, 0)
    for kind, n in session.execute(
        select(Event.kind, func.count()).where(Event.kind.in_(list(kinds))).group_by(Event.kind)
    ):
        counts[kind] = n
    return counts


def jobs_finished_since(
    session: Session, since: datetime | None, limit: int = 5000
) -> list[FinishedJob]:
    """Done jobs finished at or after ``since`` (all when None), oldest first."""
    query = (
        select(Job.id, Job.started_at, Job.finished_at, Job.summary)
        .where(Job.state == JobState.DONE, Job.finished_at.is_not(None))
        .order_by(Job.finished_at, Job.id)
        .limit(limit)
    )
    if since is not None:
        query = query.where(Job.finished_at >= since)
    return [FinishedJob(i, s, f, summary) for i, s, f, summary in session.execute(query)]


def oldest_queued_job_created_at(session: Session) -> datetime | None:
    return session.scalar(select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED))


def last_instance_received_at(session: Session) -> datetime | None:
    return session.scalar(select(func.max(Instance.received_at)))
