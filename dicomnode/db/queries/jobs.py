"""Jobs with their result objects and exports."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicomnode.db.models import Job, JobState, ResultObject, Series, Study
from dicomnode.db.queries.exports import export_views_of_jobs
from dicomnode.db.queries.views import JobView, ResultView
from dicomnode.db.rowcopy import record_from


def job_views(session: Session, rows: Sequence[tuple[Job, str, str]]) -> list[JobView]:
    job_ids = [job.id for job, _, _ in rows]
    results: dict[int, list[ResultObject]] = defaultdict(list)
    if job_ids:
        for obj in session.scalars(
            select(ResultObject).where(ResultObject.job_id.in_(job_ids)).order_by(ResultObject.id)
        ):
            results[obj.job_id].append(obj)
    exports = export_views_of_jobs(session, job_ids)
    return [
        record_from(
            JobView, job,
            job_id=job.id,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            state=job.state.value,
            results=tuple(
                record_from(
                    ResultView, obj, result_id=obj.id, exports=tuple(exports.get(obj.id, ()))
                )
                for obj in results.get(job.id, [])
            ),
        )
        for job, study_uid, series_uid in rows
    ]


def job_query() -> Any:
    return (
        select(Job, Study.study_instance_uid, Series.series_instance_uid)
        .join(Study, Job.study_id == Study.id)
        .join(Series, Job.series_id == Series.id)
    )


def list_jobs(
    session: Session, state: JobState | None = None, limit: int = 50, offset: int = 0
) -> list[JobView]:
    """Jobs, newest first, with their result objects and exports."""
    query = job_query().order_by(Job.id.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Job.state == state)
    return job_views(session, [tuple(r) for r in session.execute(query)])


def job_detail(session: Session, job_id: int) -> JobView | None:
    rows = [tuple(r) for r in session.execute(job_query().where(Job.id == job_id))]
    views = job_views(session, rows)
    return views[0] if views else None


def job_state(session: Session, job_id: int) -> JobState | None:
    return session.scalar(select(Job.state).where(Job.id == job_id))
