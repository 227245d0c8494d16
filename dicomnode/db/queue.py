"""The job queue: claim with a lease, heartbeat, complete, fail, requeue. The worker never sees
SQL.

A claim is one conditional UPDATE (``WHERE id = ? AND (queued OR lease expired)``), so two
workers cannot both win a job on SQLite or PostgreSQL. A job whose worker died keeps an
expired lease and is claimed again; after ``max_attempts`` claims it fails for good. A failed
attempt is queued again after an exponential backoff (``next_attempt_at``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import WorkerSettings
from dicomnode.contracts import EventKind, PriorReport, ResultFile, ResultKind
from dicomnode.db.models import (
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    ResultObject,
    Series,
    Study,
    utcnow,
)
from dicomnode.db.records import add_event
from dicomnode.db.rowcopy import record_from

log = logging.getLogger(__name__)

CLAIM_TRIES = 8  # jobs passed over (lost races, attempts used up) before claim gives up


@dataclass(frozen=True)
class JobTicket:
    """What a worker needs to run a job it has claimed."""

    job_id: int
    study_id: int
    study_instance_uid: str
    series_instance_uid: str
    attempt: int
    uid_root: str
    files: tuple[str, ...]  # relative to the data directory, in receive order


@dataclass(frozen=True)
class RetryBackoff:
    """How long a failed attempt waits before its retry: initial * factor ** (attempt - 1)."""

    initial_s: float = 0.0
    factor: float = 2.0
    max_s: float = 0.0

    def delay_s(self, attempt: int) -> float:
        return min(self.max_s, self.initial_s * self.factor ** max(0, attempt - 1))


NO_BACKOFF = RetryBackoff()


class JobQueue:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        max_attempts: int,
        backoff: RetryBackoff = NO_BACKOFF,
    ) -> None:
        self._sessions = sessions
        self._max_attempts = max_attempts
        self._backoff = backoff

    @classmethod
    def configured(cls, sessions: sessionmaker[Session], worker: WorkerSettings) -> JobQueue:
        """The queue with the ``[worker]`` attempts and retry backoff."""
        backoff = RetryBackoff(worker.backoff_initial_s, worker.backoff_factor,
                               worker.backoff_max_s)
        return cls(sessions, max_attempts=worker.max_attempts, backoff=backoff)

    def _runnable(self, now: datetime) -> ColumnElement[bool]:
        """Queued and past its backoff, or running with an expired lease (its worker died)."""
        return or_(
            and_(
                Job.state == JobState.QUEUED,
                or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= now),
            ),
            and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now),
        )

    def claim(
        self, owner: str, lease_s: float, now: datetime | None = None, *, only: int | None = None
    ) -> JobTicket | None:
        """Claim the oldest runnable job for ``owner``; None when there is nothing to do.
        With ``only``: that job id or nothing (a remote performer claiming one workitem).

        PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED`` lets concurrent workers pass over a
        row another one is claiming; SQLite serialises writers (BEGIN IMMEDIATE) and ignores
        it. The conditional UPDATE alone already makes a double claim impossible on both.
        """
        now = now or utcnow()
        runnable = self._runnable(now)
        if only is not None:
            runnable = and_(runnable, Job.id == only)
        for _ in range(CLAIM_TRIES):
            with self._sessions() as session, session.begin():
                job_id = session.scalar(
                    select(Job.id).where(runnable).order_by(Job.id).limit(1)
                    .with_for_update(skip_locked=True)
                )
                if job_id is None:
                    return None
                claimed = session.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .where(runnable)
                    .values(
                        state=JobState.RUNNING,
                        lease_owner=owner,
                        lease_expires_at=now + timedelta(seconds=lease_s),
                        heartbeat_at=now,
                        attempts=Job.attempts + 1,
                        started_at=now,
                        next_attempt_at=None,
                    )
                )
                if claimed.rowcount != 1:  # type: ignore[attr-defined]
                    continue
                ticket = self._start(session, job_id, owner, now)
                if ticket is not None:
                    return ticket
        return None

    def _start(self, session: Session, job_id: int, owner: str, now: datetime) -> JobTicket | None:
        """The ticket of a job just claimed; None (and failed for good) past max_attempts."""
        job = session.get_one(Job, job_id)
        if job.attempts > self._max_attempts:
            job.state = JobState.FAILED
            job.finished_at = now
            job.error = job.error or "worker stopped during every attempt"
            add_event(
                session, job.study_id, EventKind.JOB_FAILED,
                f"gave up after {job.attempts - 1} attempts: {job.error}", job_id=job.id,
            )
            log.error("job %d failed for good: %s", job.id, job.error)
            return None
        if not job.uid_root:
            job.uid_root = generate_uid(prefix=None)
        series = session.get_one(Series, job.series_id)
        study = session.get_one(Study, job.study_id)
        files = tuple(
            session.scalars(
                select(Instance.path)
                .where(Instance.series_id == job.series_id)
                .order_by(Instance.id)
            )
        )
        add_event(
            session, job.study_id, EventKind.JOB_STARTED,
            f"attempt {job.attempts} by {owner}", job_id=job.id,
        )
        return record_from(
            JobTicket, job, study, series, job_id=job.id, attempt=job.attempts, files=files
        )

    def heartbeat(self, job_id: int, owner: str, lease_s: float) -> bool:
        """Extend the lease; False if this worker no longer holds the job."""
        now = utcnow()
        with self._sessions() as session, session.begin():
            result = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
                .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def prior_reports(self, study_id: int, before_job_id: int) -> list[PriorReport]:
        """SRs of earlier finished jobs of the study, newest first (predecessor documents)."""
        with self._sessions() as session:
            rows = session.execute(
                select(ResultObject, Study.study_instance_uid)
                .join(Job, ResultObject.job_id == Job.id)
                .join(Study, Job.study_id == Study.id)
                .where(Job.study_id == study_id, Job.id < before_job_id)
                .where(Job.state == JobState.DONE, ResultObject.kind == ResultKind.SR)
                .order_by(Job.id.desc())
            )
            return [
                PriorReport(study_uid, r.series_instance_uid, r.sop_instance_uid, r.sop_class_uid)
                for r, study_uid in rows
            ]

    def hand_off(
        self,
        job_id: int,
        owner: str,
        results: Sequence[ResultFile],  # paths relative to the data directory
        destinations: Iterable[tuple[str, Sequence[str]]],
    ) -> bool:
        """Record the SEG and SR of a running job and queue their exports now, in one
        transaction, so the exporter sends them while the overlay is still being rendered
        (the exporter sends a job's overlay only after its SEG and SR). False, and nothing
        recorded, if the lease was lost to another worker."""
        now = utcnow()
        with self._sessions() as session, session.begin():
            job = session.get_one(Job, job_id)
            if job.lease_owner != owner or job.state != JobState.RUNNING:
                log.warning("job %d: lease lost before the hand-off; results not queued", job_id)
                return False
            _record_and_queue(session, job_id, results, list(destinations), now)
            add_event(
                session, job.study_id, EventKind.RESULTS_HANDED_OFF,
                f"{len(results)} structured result objects queued for export", job_id=job_id,
            )
        return True

    def complete(
        self,
        job_id: int,
        owner: str,
        results: Sequence[ResultFile],  # paths relative to the data directory
        summary: dict[str, Any],
        destinations: Iterable[tuple[str, Sequence[str]]],
        handed_off: Sequence[ResultFile] = (),
    ) -> bool:
        """Record results and queue one export per (result, destination that wants its kind).

        Results in ``handed_off`` were recorded and queued by :meth:`hand_off` and are left as
        they are (an export already sent is not sent again). All in one transaction: after a
        crash either everything is recorded or the job runs again (with the same UIDs). False
        if the lease was lost to another worker.
        """
        now = utcnow()
        done = {r.sop_instance_uid for r in handed_off}
        with self._sessions() as session, session.begin():
            job = session.get_one(Job, job_id)
            if job.lease_owner != owner or job.state != JobState.RUNNING:
                log.warning("job %d: lease lost before completion; results discarded", job_id)
                return False
            rest = [r for r in results if r.sop_instance_uid not in done]
            _record_and_queue(session, job_id, rest, list(destinations), now)
            job.state = JobState.DONE
            job.finished_at = now
            job.summary = summary
            job.lease_expires_at = None
            job.error = ""
            add_event(
                session, job.study_id, EventKind.JOB_DONE,
                f"{len(results)} result objects written", job_id=job_id,
            )
        return True

    def fail(self, job_id: int, owner: str, error: str, *, retry: bool) -> JobState:
        """Record a failure; queue again while attempts remain and ``retry`` is True."""
        now = utcnow()
        with self._sessions() as session, session.begin():
            job = session.get_one(Job, job_id)
            if job.lease_owner != owner:
                return job.state
            again = retry and job.attempts < self._max_attempts
            job.state = JobState.QUEUED if again else JobState.FAILED
            job.error = error[:4000]
            job.lease_expires_at = None
            if again:
                delay_s = self._backoff.delay_s(job.attempts)
                job.next_attempt_at = now + timedelta(seconds=delay_s)
                note = f"; retry in {delay_s:.0f} s"
            else:
                job.finished_at = now
                note = ""
            add_event(
                session, job.study_id, EventKind.JOB_RETRY if again else EventKind.JOB_FAILED,
                f"attempt {job.attempts}: {error[:500]}{note}", job_id=job_id,
            )
            return job.state

    def requeue(self, job_id: int) -> bool:
        """Operator action: run a job again (same UIDs, same objects); the one entry point of
        the CLI and the web.

        Refused (False) while a worker holds the job: the guard is the ``WHERE`` of one UPDATE,
        so a claim between a check and the write cannot slip through and no job runs twice.
        LookupError when there is no such job.
        """
        with self._sessions() as session, session.begin():
            done = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.state != JobState.RUNNING)
                .values(state=JobState.QUEUED, attempts=0, error="", next_attempt_at=None)
            )
            study_id = session.scalar(select(Job.study_id).where(Job.id == job_id))
            if study_id is None:
                raise LookupError(f"job {job_id} not found")
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return False
            add_event(session, study_id, EventKind.JOB_REQUEUED, "by operator", job_id=job_id)
        return True

    def has_results(self, job_id: int) -> bool:
        """True when an earlier attempt of the job completed (its outbox files are in use)."""
        with self._sessions() as session:
            found = session.scalar(select(ResultObject.id).where(ResultObject.job_id == job_id))
            return found is not None


def _record_and_queue(
    session: Session,
    job_id: int,
    results: Sequence[ResultFile],
    destinations: Sequence[tuple[str, Sequence[str]]],
    now: datetime,
) -> None:
    """Record ``results`` and queue each for the destinations that want its kind. An overlay
    also goes to a destination that refused this job's SEG or SR before the overlay existed
    (the overlay series is what it gets instead)."""
    refused = set(session.scalars(
        select(Export.destination)
        .join(ResultObject, Export.result_object_id == ResultObject.id)
        .where(ResultObject.job_id == job_id, Export.state == ExportState.REFUSED)
    )) if any(r.kind == ResultKind.OVERLAY for r in results) else set()
    for res in results:
        obj = _record_result(session, job_id, res)
        wanting = [name for name, kinds in destinations
                   if res.kind in kinds or (res.kind == ResultKind.OVERLAY and name in refused)]
        _queue_exports(session, obj.id, wanting, now)


def _record_result(session: Session, job_id: int, res: ResultFile) -> ResultObject:
    """The row of a result file; a re-run reuses the row of the same SOP Instance UID."""
    obj = session.scalar(
        select(ResultObject).where(ResultObject.sop_instance_uid == res.sop_instance_uid)
    )
    if obj is None:
        obj = ResultObject(
            job_id=job_id,
            kind=str(res.kind),
            sop_class_uid=res.sop_class_uid,
            sop_instance_uid=res.sop_instance_uid,
            series_instance_uid=res.series_instance_uid,
            path=res.path.as_posix(),
        )
        session.add(obj)
        session.flush()
    obj.path = res.path.as_posix()
    return obj


def _queue_exports(
    session: Session, result_object_id: int, destinations: Sequence[str], now: datetime
) -> None:
    """One pending export of the object to each destination; an existing row starts over."""
    existing = {
        e.destination: e
        for e in session.scalars(select(Export).where(Export.result_object_id == result_object_id))
    }
    for name in destinations:
        export = existing.get(name)
        if export is None:
            session.add(Export(result_object_id=result_object_id, destination=name))
        else:
            export.state = ExportState.PENDING
            export.attempts = 0
            export.next_attempt_at = now
