"""Study-level queries for the assembler: which studies went quiet, what their series hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from dicomnode.contracts import EventKind
from dicomnode.db.models import Instance, Job, JobState, Series, SeriesState, Study
from dicomnode.db.records import add_event
from dicomnode.jobs.selection import InstanceGeometry, SeriesCandidate


@dataclass(frozen=True)
class StudySnapshot:
    study_id: int
    study_instance_uid: str
    last_received_at: datetime
    candidates: tuple[SeriesCandidate, ...]
    series_ids: dict[str, int]  # series uid -> row id
    sop_uids: dict[str, tuple[str, ...]]  # series uid -> its SOP instance UIDs


def studies_due(session: Session, quiet_since: datetime) -> list[int]:
    """Studies with no instance since ``quiet_since`` whose newest instances were not evaluated."""
    rows = session.scalars(
        select(Study.id)
        .where(Study.last_received_at <= quiet_since)
        .where(or_(Study.evaluated_at.is_(None), Study.evaluated_at < Study.last_received_at))
        .order_by(Study.id)
    )
    return list(rows)


def load_study(session: Session, study_id: int) -> StudySnapshot:
    study = session.get_one(Study, study_id)
    candidates: list[SeriesCandidate] = []
    series_ids: dict[str, int] = {}
    sop_uids: dict[str, tuple[str, ...]] = {}
    for series in session.scalars(select(Series).where(Series.study_id == study_id)):
        instances = session.scalars(
            select(Instance).where(Instance.series_id == series.id).order_by(Instance.id)
        ).all()
        candidates.append(
            SeriesCandidate(
                series_instance_uid=series.series_instance_uid,
                modality=series.modality,
                description=series.description,
                instances=tuple(InstanceGeometry.of(i) for i in instances),
            )
        )
        series_ids[series.series_instance_uid] = series.id
        sop_uids[series.series_instance_uid] = tuple(i.sop_instance_uid for i in instances)
    return StudySnapshot(
        study_id=study.id,
        study_instance_uid=study.study_instance_uid,
        last_received_at=study.last_received_at,
        candidates=tuple(candidates),
        series_ids=series_ids,
        sop_uids=sop_uids,
    )


def set_series_state(session: Session, series_id: int, state: SeriesState, reason: str) -> bool:
    """Set state and reason; True if either changed (so callers log each decision once)."""
    series = session.get_one(Series, series_id)
    if series.state == state and series.skip_reason == reason:
        return False
    series.state = state
    series.skip_reason = reason
    return True


def mark_evaluated(session: Session, study_id: int, at: datetime) -> None:
    session.execute(update(Study).where(Study.id == study_id).values(evaluated_at=at))


def job_with_fingerprint(session: Session, fingerprint: str) -> Job | None:
    return session.scalars(
        select(Job).where(Job.fingerprint == fingerprint).order_by(Job.id.desc())
    ).first()


def enqueue_job(
    session: Session, study_id: int, series_id: int, fingerprint: str, instance_count: int
) -> int:
    job = Job(
        study_id=study_id,
        series_id=series_id,
        fingerprint=fingerprint,
        instance_count=instance_count,
    )
    session.add(job)
    session.flush()
    add_event(session, study_id, EventKind.JOB_QUEUED, f"{instance_count} instances", job_id=job.id)
    return job.id


def requeue_failed(session: Session, job: Job) -> int:
    """Queue a job that failed for good again (its study was re-sent): fresh attempts."""
    failed_after = job.attempts
    job.state = JobState.QUEUED
    job.attempts = 0
    job.next_attempt_at = None
    job.lease_expires_at = None
    job.finished_at = None
    add_event(
        session, job.study_id, EventKind.JOB_REQUEUED,
        f"study re-sent after the job failed ({failed_after} attempts)", job_id=job.id,
    )
    return job.id


def idle_studies_from(
    session: Session, idle_since: datetime, ae_titles: Sequence[str]
) -> list[tuple[int, str, str, datetime]]:
    """Studies idle since ``idle_since`` and not evaluated since their newest instance, with
    instances sent by one of ``ae_titles``: (id, study UID, calling AE title, last received)."""
    if not ae_titles:
        return []
    rows = session.execute(
        select(Study.id, Study.study_instance_uid, Instance.calling_ae_title,
               Study.last_received_at)
        .join(Series, Series.study_id == Study.id)
        .join(Instance, Instance.series_id == Series.id)
        .where(Study.last_received_at <= idle_since)
        .where(or_(Study.evaluated_at.is_(None), Study.evaluated_at < Study.last_received_at))
        .where(Instance.calling_ae_title.in_(ae_titles))
        .distinct(),
    )
    seen: dict[int, tuple[int, str, str, datetime]] = {}
    for study_id, uid, aet, last in rows:
        seen.setdefault(study_id, (study_id, uid, aet, last))
    return sorted(seen.values())


def instance_counts(session: Session, study_id: int) -> dict[str, int]:
    """Series Instance UID -> instances the node holds, for one study."""
    rows = session.execute(
        select(Series.series_instance_uid, func.count(Instance.id))
        .join(Instance, Instance.series_id == Series.id)
        .where(Series.study_id == study_id)
        .group_by(Series.series_instance_uid)
    )
    return {uid: int(n) for uid, n in rows}
