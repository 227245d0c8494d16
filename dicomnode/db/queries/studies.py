"""Studies: the list, one study's detail (series, jobs, timeline) and its events."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import (
    Event,
    Export,
    ExportState,
    Job,
    ResultObject,
    Series,
    SeriesState,
    Study,
)
from dicomnode.db.queries.jobs import job_query, job_views
from dicomnode.db.queries.views import (
    EventView,
    SeriesView,
    StudyDetail,
    StudySummary,
    zero_states,
)
from dicomnode.db.rowcopy import record_from


def _study_status(series: Sequence[Series], last_job_state: str) -> str:
    if any(s.state == SeriesState.RECEIVING for s in series):
        return "receiving"
    if last_job_state:
        return last_job_state
    if series and all(s.state == SeriesState.SKIPPED for s in series):
        return "skipped"
    return "complete"


def _summaries(session: Session, studies: Sequence[Study]) -> list[StudySummary]:
    """Summaries of ``studies`` with three grouped queries, whatever their number."""
    ids = [s.id for s in studies]
    if not ids:
        return []
    series_by_study: dict[int, list[Series]] = defaultdict(list)
    for series in session.scalars(select(Series).where(Series.study_id.in_(ids))):
        series_by_study[series.study_id].append(series)
    last_job: dict[int, tuple[int | None, str]] = {}
    for job_id, study_id, job_state_ in session.execute(
        select(Job.id, Job.study_id, Job.state).where(Job.study_id.in_(ids)).order_by(Job.id)
    ):
        last_job[study_id] = (job_id, job_state_.value)
    exports: dict[int, dict[str, int]] = defaultdict(lambda: zero_states(ExportState))
    for study_id, export_state_, n in session.execute(
        select(Job.study_id, Export.state, func.count())
        .join(ResultObject, Export.result_object_id == ResultObject.id)
        .join(Job, ResultObject.job_id == Job.id)
        .where(Job.study_id.in_(ids))
        .group_by(Job.study_id, Export.state)
    ):
        exports[study_id][export_state_.value] = n
    out = []
    for study in studies:
        its_series = series_by_study.get(study.id, [])
        last_id, last_state = last_job.get(study.id, (None, ""))
        out.append(
            StudySummary(
                study_instance_uid=study.study_instance_uid,
                accession_number=study.accession_number,
                first_received_at=study.first_received_at,
                last_received_at=study.last_received_at,
                status=_study_status(its_series, last_state),
                series_count=len(its_series),
                instance_count=sum(s.instance_count for s in its_series),
                skipped_series=sum(1 for s in its_series if s.state == SeriesState.SKIPPED),
                last_job_id=last_id,
                last_job_state=last_state,
                exports=dict(exports[study.id]),
            )
        )
    return out


def list_studies(session: Session, limit: int = 50, offset: int = 0) -> list[StudySummary]:
    """Studies, most recently received first."""
    studies = session.scalars(
        select(Study).order_by(Study.last_received_at.desc(), Study.id.desc())
        .limit(limit).offset(offset)
    ).all()
    return _summaries(session, studies)


def _series_view(s: Series) -> SeriesView:
    return record_from(SeriesView, s, state=s.state.value, reason=s.skip_reason)


def study_events(session: Session, study_id: int) -> list[EventView]:
    return [
        EventView(e.id, e.at, e.kind, e.message, e.job_id)
        for e in session.scalars(select(Event).where(Event.study_id == study_id).order_by(Event.id))
    ]


def study_detail(session: Session, study_instance_uid: str) -> StudyDetail | None:
    """One study: its summary, series (with skip reasons), jobs (with results and exports) and
    timeline, oldest event first."""
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_instance_uid))
    if study is None:
        return None
    series = session.scalars(
        select(Series).where(Series.study_id == study.id)
        .order_by(Series.series_number, Series.id)
    ).all()
    jobs = job_views(
        session,
        [tuple(r) for r in session.execute(
            job_query().where(Job.study_id == study.id).order_by(Job.id.desc())
        )],
    )
    return StudyDetail(
        study=_summaries(session, [study])[0],
        evaluated_at=study.evaluated_at,
        series=tuple(_series_view(s) for s in series),
        jobs=tuple(jobs),
        events=tuple(study_events(session, study.id)),
    )


def study_timeline(session: Session, study_instance_uid: str) -> list[EventView] | None:
    study_id = session.scalar(
        select(Study.id).where(Study.study_instance_uid == study_instance_uid)
    )
    return None if study_id is None else study_events(session, study_id)
