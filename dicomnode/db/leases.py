"""Lease recovery: a job leased by a process of this host that no longer exists is freed now.

A worker that dies (kill -9, OOM) keeps its lease until it expires; the supervisor and the next
worker on the same host do not wait for that, since the lease owner ``host:pid`` names a process
they can check.
"""

from __future__ import annotations

import os

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.db.models import Job, JobState, utcnow


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_dead_local_leases(sessions: sessionmaker[Session], hostname: str) -> int:
    """Expire leases held by processes of ``hostname`` that no longer exist; returns how many."""
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
