"""The job queue seen as UPS workitems (PS3.4 Annex CC, PS3.18 §11): what a remote performer
queries and claims. No schema of its own: a workitem *is* a job.

- Workitem UID: ``2.25.<UUID>``, a version-8 UUID whose low 48 bits hold the job id and whose
  other bits hash the job's identity (id, series, creation time), so a UID names one job of
  one node and is looked up without a table.
- State: queued -> SCHEDULED; running under a live lease -> IN PROGRESS; running under an
  expired lease -> SCHEDULED again (claimable, as for local workers); done -> COMPLETED;
  failed -> CANCELED.
- A remote claim holds the job's lease as owner ``ups:<Transaction UID>``; the queue's own
  heartbeat, complete and fail then apply unchanged.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from dicomnode.contracts import PriorReport
from dicomnode.db.models import Instance, Job, JobState, Series, Study, utcnow

REMOTE_OWNER_PREFIX = "ups:"
JOB_ID_BITS = 48
SCHEDULED = "SCHEDULED"
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
CANCELED = "CANCELED"
UPS_STATES = (SCHEDULED, IN_PROGRESS, COMPLETED, CANCELED)


def remote_owner(transaction_uid: str) -> str:
    return REMOTE_OWNER_PREFIX + transaction_uid


def workitem_uid(job_id: int, series_uid: str, created_at: datetime) -> str:
    """The job's workitem UID (see the module docstring); at most 44 characters."""
    digest = hashlib.sha256(
        f"dicomnode-workitem|{job_id}|{series_uid}|{created_at.isoformat()}".encode()
    ).digest()
    value = int.from_bytes(digest[:16], "big")
    value = (value >> JOB_ID_BITS << JOB_ID_BITS) | (job_id & ((1 << JOB_ID_BITS) - 1))
    # RFC 9562 version 8 (custom) with the RFC variant: bits set outside the job id's 48.
    value = (value & ~(0xF << 76)) | (0x8 << 76)
    value = (value & ~(0x3 << 62)) | (0x2 << 62)
    return f"2.25.{uuid.UUID(int=value).int}"


def job_id_of(uid: str) -> int | None:
    """The job id a workitem UID names (still to be checked against the job), or None."""
    prefix, _, digits = uid.partition("2.25.")
    if prefix or not digits.isdigit() or len(digits) > 39:
        return None
    return int(digits) & ((1 << JOB_ID_BITS) - 1)


def _state_condition(state: str, now: datetime) -> ColumnElement[bool]:
    expired = and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
    if state == SCHEDULED:  # claimable now: past a retry's backoff, or the lease expired
        due = or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now)
        return or_(and_(Job.state == JobState.QUEUED, due), expired)
    if state == IN_PROGRESS:
        return and_(Job.state == JobState.RUNNING, Job.lease_expires_at >= now)
    if state == COMPLETED:
        return Job.state == JobState.DONE
    if state == CANCELED:
        return Job.state == JobState.FAILED
    raise ValueError(f"unknown Procedure Step State {state[:20]!r}")


def ups_state(job: Job, now: datetime) -> str:
    if job.state == JobState.QUEUED:
        return SCHEDULED
    if job.state == JobState.RUNNING:
        live = job.lease_expires_at is not None and job.lease_expires_at >= now
        return IN_PROGRESS if live else SCHEDULED
    return COMPLETED if job.state == JobState.DONE else CANCELED


@dataclass(frozen=True)
class WorkitemView:
    """What a workitem says about its job: no patient attributes, only UIDs and times."""

    uid: str
    job_id: int
    study_id: int
    state: str
    study_instance_uid: str
    series_instance_uid: str
    instances: tuple[tuple[str, str], ...]  # (SOP class, SOP instance) in receive order
    created_at: datetime
    scheduled_at: datetime  # when it may run: created, or a retry's backoff end
    attempts: int
    uid_root: str  # "" until the job is first claimed
    predecessors: tuple[PriorReport, ...]  # earlier SRs of the study (filled by the caller)


def _view(session: Session, job: Job, now: datetime) -> WorkitemView:
    series = session.get_one(Series, job.series_id)
    study = session.get_one(Study, job.study_id)
    instances = tuple(
        (str(c), str(i))
        for c, i in session.execute(
            select(Instance.sop_class_uid, Instance.sop_instance_uid)
            .where(Instance.series_id == job.series_id)
            .order_by(Instance.id)
        )
    )
    return WorkitemView(
        uid=workitem_uid(job.id, series.series_instance_uid, job.created_at),
        job_id=job.id,
        study_id=job.study_id,
        state=ups_state(job, now),
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        instances=instances,
        created_at=job.created_at,
        scheduled_at=job.next_attempt_at or job.created_at,
        attempts=job.attempts,
        uid_root=job.uid_root,
        predecessors=(),
    )


def find_job(session: Session, uid: str) -> Job | None:
    """The job a workitem UID names, or None (unknown or forged UID)."""
    job_id = job_id_of(uid)
    if job_id is None:
        return None
    job = session.get(Job, job_id)
    if job is None:
        return None
    series_uid = session.scalar(
        select(Series.series_instance_uid).where(Series.id == job.series_id)
    )
    if series_uid is None or workitem_uid(job.id, series_uid, job.created_at) != uid:
        return None
    return job


def get_workitem(session: Session, uid: str, now: datetime | None = None) -> WorkitemView | None:
    job = find_job(session, uid)
    return None if job is None else _view(session, job, now or utcnow())


def search_workitems(
    session: Session, states: tuple[str, ...], limit: int, offset: int = 0,
    now: datetime | None = None,
) -> list[WorkitemView]:
    """Workitems in any of ``states`` (all when empty), oldest job first."""
    now = now or utcnow()
    query = select(Job).order_by(Job.id).offset(offset).limit(limit)
    if states:
        query = query.where(or_(*(_state_condition(s, now) for s in states)))
    return [_view(session, job, now) for job in session.scalars(query)]


def held_by(session: Session, transaction_uid: str) -> Job | None:
    """The running job whose lease this transaction holds, or None."""
    return session.scalar(
        select(Job).where(
            Job.state == JobState.RUNNING, Job.lease_owner == remote_owner(transaction_uid)
        )
    )
