"""The queue heals itself: retries back off, a failed attempt leaves no partial outbox, a study
re-sent after its job failed is queued again, and concurrent claims never share a job. On
SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import replace
from datetime import timedelta

from pydicom.uid import generate_uid
from sqlalchemy import select

from dicomnode.db.leases import release_dead_local_leases
from dicomnode.db.models import Event, Job, JobState, Series, Study, utcnow
from dicomnode.db.queue import JobQueue, RetryBackoff
from dicomnode.db.records import InstanceRecorder
from dicomnode.errors import safe_message
from dicomnode.jobs.assembler import Assembler
from dicomnode.jobs.worker import Worker

from .conftest import both_backends, ct_series, det_uid
from .test_assembler_and_queue import later, record_series
from .test_receiver import _store

CLAIM_THREADS = 6
JOBS = 24


@both_backends
def test_failed_attempts_back_off_exponentially(sessions, queued_job) -> None:
    q = JobQueue(sessions, max_attempts=3, backoff=RetryBackoff(10.0, 3.0, 60.0))
    now = utcnow()
    for attempt, delay_s in ((1, 10.0), (2, 30.0)):
        ticket = q.claim("w:1", lease_s=60, now=now)
        assert ticket is not None and ticket.attempt == attempt
        failed_at = utcnow()
        assert q.fail(queued_job, "w:1", "OSError: disk full", retry=True) == JobState.QUEUED
        with sessions() as session:
            due = session.get_one(Job, queued_job).next_attempt_at
        assert due is not None and abs((due - failed_at).total_seconds() - delay_s) < 5
        assert q.claim("w:1", lease_s=60, now=due - timedelta(seconds=1)) is None
        now = due + timedelta(seconds=1)
    assert q.claim("w:1", lease_s=60, now=now) is not None
    assert q.fail(queued_job, "w:1", "OSError: disk full", retry=True) == JobState.FAILED
    assert RetryBackoff(10.0, 3.0, 60.0).delay_s(5) == 60.0


class _FillsThenFails:
    """A processor that writes a large partial result, then fails as on a full disk."""

    def process(self, request):
        (request.out_dir / "seg.dcm").write_bytes(b"\0" * 1_000_000)
        raise OSError(28, "No space left on device", "PatientBirthDate 'notadate'")


@both_backends
def test_failed_attempt_removes_its_partial_outbox(settings, sessions, storage,
                                                   queued_job) -> None:
    s = replace(settings, worker=replace(settings.worker, backoff_initial_s=5.0))
    assert Worker(s, sessions, storage, _FillsThenFails(), owner="w:1").run_once()
    outbox = storage.root / "outbox" / f"job-{queued_job:08d}"
    assert not outbox.exists()
    with sessions() as session:
        job = session.get_one(Job, queued_job)
        assert job.state == JobState.QUEUED and job.next_attempt_at is not None
        assert "notadate" not in job.error and "No space left" in job.error
        events = " ".join(session.scalars(select(Event.message)))
        assert "notadate" not in events and "retry in 5 s" in events


def test_safe_message_drops_quoted_values_of_foreign_errors() -> None:
    foreign = ValueError("Unable to convert 'notadate' to 'DA' object")
    assert safe_message(foreign) == "ValueError: Unable to convert '…' to '…' object"
    from dicomnode.errors import ProcessorError

    assert "'PixelSpacing'" in safe_message(ProcessorError("attribute 'PixelSpacing' missing"))


@both_backends
def test_study_resent_after_final_failure_is_queued_again(settings, sessions) -> None:
    rec = InstanceRecorder(sessions)
    study, series = generate_uid(prefix=None), generate_uid(prefix=None)
    record_series(rec, study, series, 45)
    asm = Assembler(sessions, settings)
    (job_id,) = asm.evaluate_due(later())
    q = JobQueue(sessions, max_attempts=1)
    assert q.claim("w:1", lease_s=60) is not None
    assert q.fail(job_id, "w:1", "OSError: disk full", retry=True) == JobState.FAILED
    assert asm.evaluate_due(later(120)) == []  # nothing new: stays failed
    assert rec.resent(det_uid(series, "3"))  # the modality sends the study again
    assert asm.evaluate_due(later(180)) == [job_id]
    with sessions() as session:
        job = session.get_one(Job, job_id)
        assert job.state == JobState.QUEUED and job.attempts == 0
    ticket = q.claim("w:1", lease_s=60)
    assert ticket is not None and ticket.job_id == job_id
    q.complete(job_id, "w:1", [], {}, [])
    assert not rec.resent(det_uid(series, "3"))  # a re-send of a finished study changes nothing
    assert asm.evaluate_due(later(240)) == []


def _many_jobs(sessions, count: int) -> list[int]:
    with sessions() as session, session.begin():
        study = Study(study_instance_uid=generate_uid(prefix=None))
        session.add(study)
        session.flush()
        series = Series(study_id=study.id, series_instance_uid=generate_uid(prefix=None))
        session.add(series)
        session.flush()
        jobs = [Job(study_id=study.id, series_id=series.id, fingerprint=str(i),
                    instance_count=1) for i in range(count)]
        session.add_all(jobs)
        session.flush()
        return [j.id for j in jobs]


@both_backends
def test_concurrent_claims_take_each_job_exactly_once(sessions) -> None:
    ids = _many_jobs(sessions, JOBS)
    q = JobQueue(sessions, max_attempts=3)
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(CLAIM_THREADS)

    def claim_all(owner: str) -> None:
        start.wait()
        while (ticket := q.claim(owner, lease_s=300)) is not None:
            with lock:
                claimed.append((owner, ticket.job_id))

    threads = [threading.Thread(target=claim_all, args=(f"w:{i}",)) for i in range(CLAIM_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(job for _, job in claimed) == ids
    with sessions() as session:
        owners = dict(session.execute(select(Job.id, Job.lease_owner)).all())
        assert all(session.get_one(Job, i).attempts == 1 for i in ids)
    assert {job: owner for owner, job in claimed} == owners


@both_backends
def test_a_resend_over_dicom_requeues_the_failed_job(settings, sessions, receiver) -> None:
    series = ct_series(45)
    assert {s.Status for s in _store(receiver, series)} == {0}
    asm = Assembler(sessions, settings)
    (job_id,) = asm.evaluate_due(later())
    q = JobQueue(sessions, max_attempts=1)
    assert q.claim("w:1", lease_s=60) is not None
    assert q.fail(job_id, "w:1", "OSError: disk full", retry=True) == JobState.FAILED
    assert {s.Status for s in _store(receiver, series[:3])} == {0}  # duplicates, acknowledged
    assert asm.evaluate_due(later(120)) == [job_id]
    with sessions() as session:
        assert session.get_one(Job, job_id).state == JobState.QUEUED
        assert session.scalar(select(Series.instance_count)) == 45


@both_backends
def test_a_dead_local_workers_lease_is_released(sessions, queued_job) -> None:
    gone = subprocess.Popen(["true"])  # a process that has exited (and was reaped)
    gone.wait()
    dead_pid = gone.pid
    q = JobQueue(sessions, max_attempts=3)
    assert q.claim(f"thishost:{dead_pid}", lease_s=600) is not None
    assert q.claim("thishost:1", lease_s=600) is None  # leased, not expired
    assert release_dead_local_leases(sessions, "otherhost") == 0
    assert release_dead_local_leases(sessions, "thishost") == 1
    ticket = q.claim("thishost:1", lease_s=600)
    assert ticket is not None and ticket.job_id == queued_job and ticket.attempt == 2
