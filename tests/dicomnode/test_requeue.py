"""The operator's requeue refuses a running job in the database itself: raced against claims
(threads on a real SQLite file), no job is ever held by two workers."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from dicomnode.db.models import Event, Job, JobState
from dicomnode.db.queue import JobQueue


def _set_state(sessions, job_id: int, state: JobState) -> None:
    with sessions() as session:
        job = session.get_one(Job, job_id)
        job.state, job.attempts = state, 1
        session.commit()


def test_requeue_refuses_a_running_job_and_queues_a_finished_one(sessions, queued_job) -> None:
    queue = JobQueue(sessions, max_attempts=3)
    assert queue.claim("w:1", 60) is not None
    assert queue.requeue(queued_job) is False
    with sessions() as session:
        job = session.get_one(Job, queued_job)
        assert (job.state, job.lease_owner, job.attempts) == (JobState.RUNNING, "w:1", 1)
    assert queue.claim("w:2", 60) is None  # nothing for a second worker
    _set_state(sessions, queued_job, JobState.FAILED)
    assert queue.requeue(queued_job) is True
    with sessions() as session:
        job = session.get_one(Job, queued_job)
        assert (job.state, job.attempts, job.error) == (JobState.QUEUED, 0, "")
        kinds = session.scalars(select(Event.kind).where(Event.job_id == queued_job)).all()
        assert kinds.count("job-requeued") == 1
    with pytest.raises(LookupError):
        queue.requeue(queued_job + 1000)


def _race(queue: JobQueue, job_id: int, owner: str) -> tuple[object, list[bool]]:
    """One claim and two requeues released together; (the claim's ticket, the requeues)."""
    start = threading.Barrier(3)
    tickets: list[object] = []
    outcomes: list[bool] = []

    def claim() -> None:
        start.wait()
        tickets.append(queue.claim(owner, 60))

    def requeue() -> None:
        start.wait()
        outcomes.append(queue.requeue(job_id))

    threads = [threading.Thread(target=f) for f in (claim, requeue, requeue)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(outcomes) == 2 and len(tickets) == 1
    return tickets[0], outcomes


def test_two_requeues_raced_against_a_claim_never_double_claim(sessions, queued_job) -> None:
    queue = JobQueue(sessions, max_attempts=100)
    for round_ in range(15):
        _set_state(sessions, queued_job, JobState.DONE)
        ticket, outcomes = _race(queue, queued_job, f"w:{round_}")
        with sessions() as session:
            job = session.get_one(Job, queued_job)
        if ticket is not None:
            # The claim won: every requeue after it was refused, so the job is still held by
            # this worker and a second worker gets nothing.
            assert (job.state, job.lease_owner) == (JobState.RUNNING, f"w:{round_}")
            assert queue.claim("intruder", 60) is None
        else:
            # Both requeues ran before the claim looked: the job waits for a worker.
            assert job.state == JobState.QUEUED and all(outcomes)
