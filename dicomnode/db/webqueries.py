"""Read queries for the web app: studies, jobs, exports and events for operators, the totals
behind /metrics, and the catalogue of stored files the node serves over DICOMweb.

Every function takes the caller's session (one per web request) and only reads. Nothing here
returns patient names: the tables hold none. The DICOMweb catalogue lists two kinds of files:
received instances (``spool/``, the ``instances`` table) and the node's own result objects
(``outbox/``, the ``result_objects`` table joined through ``jobs`` to their study).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import (
    Event,
    Export,
    ExportState,
    Instance,
    Job,
    JobState,
    ResultObject,
    Series,
    SeriesState,
    Study,
)

SOURCE_RECEIVED = "received"
SOURCE_RESULT = "result"
# Modality of a result series when its kind says it (OVERLAY: read from the file).
RESULT_KIND_MODALITY = {"SEG": "SEG", "SR": "SR"}


# ---------------------------------------------------------------------------------------------
# Operator views


@dataclass(frozen=True)
class SeriesView:
    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    state: str
    reason: str  # why the series was skipped or chosen
    instance_count: int
    last_received_at: datetime


@dataclass(frozen=True)
class ExportView:
    export_id: int
    job_id: int
    study_instance_uid: str
    kind: str
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str
    sent_at: datetime | None


@dataclass(frozen=True)
class ResultView:
    result_id: int
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    created_at: datetime
    exports: tuple[ExportView, ...]


@dataclass(frozen=True)
class JobView:
    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    state: str
    attempts: int
    instance_count: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lease_owner: str
    error: str
    summary: dict[str, Any] | None
    results: tuple[ResultView, ...]


@dataclass(frozen=True)
class EventView:
    event_id: int
    at: datetime
    kind: str
    message: str
    job_id: int | None


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    accession_number: str
    first_received_at: datetime
    last_received_at: datetime
    status: str  # receiving, complete, skipped, queued, running, done, failed
    series_count: int
    instance_count: int
    skipped_series: int
    last_job_id: int | None
    last_job_state: str
    exports: dict[str, int]  # export state -> count over the study's jobs


@dataclass(frozen=True)
class StudyDetail:
    study: StudySummary
    evaluated_at: datetime | None
    series: tuple[SeriesView, ...]
    jobs: tuple[JobView, ...]
    events: tuple[EventView, ...]


def _zero_states(states: type[JobState] | type[ExportState]) -> dict[str, int]:
    return {s.value: 0 for s in states}


def totals(session: Session) -> dict[str, Any]:
    """Studies, series, instances, jobs by state and exports by state (every state present)."""
    jobs = _zero_states(JobState)
    for job_state_, n in session.execute(select(Job.state, func.count()).group_by(Job.state)):
        jobs[job_state_.value] = n
    exports = _zero_states(ExportState)
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
    exports: dict[int, dict[str, int]] = defaultdict(lambda: _zero_states(ExportState))
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
    return SeriesView(
        series_instance_uid=s.series_instance_uid,
        series_number=s.series_number,
        modality=s.modality,
        description=s.description,
        state=s.state.value,
        reason=s.skip_reason,
        instance_count=s.instance_count,
        last_received_at=s.last_received_at,
    )


def _export_views(session: Session, job_ids: Collection[int]) -> dict[int, list[ExportView]]:
    """Exports of the given jobs, keyed by result object id."""
    out: dict[int, list[ExportView]] = defaultdict(list)
    if not job_ids:
        return out
    rows = session.execute(
        select(Export, ResultObject, Study.study_instance_uid)
        .join(ResultObject, Export.result_object_id == ResultObject.id)
        .join(Job, ResultObject.job_id == Job.id)
        .join(Study, Job.study_id == Study.id)
        .where(ResultObject.job_id.in_(job_ids))
        .order_by(Export.id)
    )
    for export, obj, study_uid in rows:
        out[obj.id].append(_export_view(export, obj, study_uid))
    return out


def _export_view(export: Export, obj: ResultObject, study_uid: str) -> ExportView:
    return ExportView(
        export_id=export.id,
        job_id=obj.job_id,
        study_instance_uid=study_uid,
        kind=obj.kind,
        sop_instance_uid=obj.sop_instance_uid,
        destination=export.destination,
        state=export.state.value,
        attempts=export.attempts,
        next_attempt_at=export.next_attempt_at,
        last_status=export.last_status,
        last_error=export.last_error,
        sent_at=export.sent_at,
    )


def _job_views(session: Session, rows: Sequence[tuple[Job, str, str]]) -> list[JobView]:
    job_ids = [job.id for job, _, _ in rows]
    results: dict[int, list[ResultObject]] = defaultdict(list)
    if job_ids:
        for obj in session.scalars(
            select(ResultObject).where(ResultObject.job_id.in_(job_ids)).order_by(ResultObject.id)
        ):
            results[obj.job_id].append(obj)
    exports = _export_views(session, job_ids)
    return [
        JobView(
            job_id=job.id,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            state=job.state.value,
            attempts=job.attempts,
            instance_count=job.instance_count,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            lease_owner=job.lease_owner,
            error=job.error,
            summary=job.summary,
            results=tuple(
                ResultView(
                    result_id=obj.id,
                    kind=obj.kind,
                    sop_class_uid=obj.sop_class_uid,
                    sop_instance_uid=obj.sop_instance_uid,
                    series_instance_uid=obj.series_instance_uid,
                    created_at=obj.created_at,
                    exports=tuple(exports.get(obj.id, ())),
                )
                for obj in results.get(job.id, [])
            ),
        )
        for job, study_uid, series_uid in rows
    ]


def _job_query() -> Any:
    return (
        select(Job, Study.study_instance_uid, Series.series_instance_uid)
        .join(Study, Job.study_id == Study.id)
        .join(Series, Job.series_id == Series.id)
    )


def list_jobs(
    session: Session, state: JobState | None = None, limit: int = 50, offset: int = 0
) -> list[JobView]:
    """Jobs, newest first, with their result objects and exports."""
    query = _job_query().order_by(Job.id.desc()).limit(limit).offset(offset)
    if state is not None:
        query = query.where(Job.state == state)
    return _job_views(session, [tuple(r) for r in session.execute(query)])


def job_detail(session: Session, job_id: int) -> JobView | None:
    rows = [tuple(r) for r in session.execute(_job_query().where(Job.id == job_id))]
    views = _job_views(session, rows)
    return views[0] if views else None


def list_exports(
    session: Session, states: Collection[ExportState] = (), limit: int = 100, offset: int = 0
) -> list[ExportView]:
    """Exports, newest first, optionally only those in ``states``."""
    query = (
        select(Export, ResultObject, Study.study_instance_uid)
        .join(ResultObject, Export.result_object_id == ResultObject.id)
        .join(Job, ResultObject.job_id == Job.id)
        .join(Study, Job.study_id == Study.id)
        .order_by(Export.id.desc())
        .limit(limit)
        .offset(offset)
    )
    if states:
        query = query.where(Export.state.in_(list(states)))
    return [_export_view(e, r, uid) for e, r, uid in session.execute(query)]


@dataclass(frozen=True)
class FailedExportGroup:
    """The failed exports of one job to one destination (the dashboard lists these)."""

    study_instance_uid: str
    job_id: int
    destination: str
    count: int
    kinds: tuple[tuple[str, int], ...]  # (result kind, failed exports)
    max_attempts: int
    last_status: int | None  # of the newest failed export
    last_error: str


def failed_export_groups(session: Session, limit: int = 100) -> list[FailedExportGroup]:
    """Failed exports grouped by job and destination, newest group first."""
    grouped = session.execute(
        select(ResultObject.job_id, Export.destination, ResultObject.kind,
               func.count(Export.id), func.max(Export.attempts), func.max(Export.id))
        .join(ResultObject, Export.result_object_id == ResultObject.id)
        .where(Export.state == ExportState.FAILED)
        .group_by(ResultObject.job_id, Export.destination, ResultObject.kind)
    ).all()
    merged: dict[tuple[int, str], dict[str, Any]] = {}
    for job_id, destination, kind, count, attempts, newest in grouped:
        g = merged.setdefault((job_id, destination),
                              {"kinds": [], "count": 0, "attempts": 0, "newest": 0})
        g["kinds"].append((kind, int(count)))
        g["count"] += int(count)
        g["attempts"] = max(g["attempts"], int(attempts))
        g["newest"] = max(g["newest"], int(newest))
    keys = sorted(merged, key=lambda k: merged[k]["newest"], reverse=True)[:limit]
    newest_ids = [merged[k]["newest"] for k in keys]
    details = {
        export.id: (export, study_uid)
        for export, study_uid in session.execute(
            select(Export, Study.study_instance_uid)
            .join(ResultObject, Export.result_object_id == ResultObject.id)
            .join(Job, ResultObject.job_id == Job.id)
            .join(Study, Job.study_id == Study.id)
            .where(Export.id.in_(newest_ids))
        )
    }
    out = []
    for key in keys:
        g = merged[key]
        export, study_uid = details[g["newest"]]
        out.append(FailedExportGroup(
            study_instance_uid=study_uid, job_id=key[0], destination=key[1], count=g["count"],
            kinds=tuple(sorted(g["kinds"])), max_attempts=g["attempts"],
            last_status=export.last_status, last_error=export.last_error,
        ))
    return out


def export_view(session: Session, export_id: int) -> ExportView | None:
    row = session.execute(
        select(Export, ResultObject, Study.study_instance_uid)
        .join(ResultObject, Export.result_object_id == ResultObject.id)
        .join(Job, ResultObject.job_id == Job.id)
        .join(Study, Job.study_id == Study.id)
        .where(Export.id == export_id)
    ).first()
    return _export_view(row[0], row[1], row[2]) if row is not None else None


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
    jobs = _job_views(
        session,
        [tuple(r) for r in session.execute(
            _job_query().where(Job.study_id == study.id).order_by(Job.id.desc())
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


def job_state(session: Session, job_id: int) -> JobState | None:
    return session.scalar(select(Job.state).where(Job.id == job_id))


def export_state(session: Session, export_id: int) -> ExportState | None:
    return session.scalar(select(Export.state).where(Export.id == export_id))


# ---------------------------------------------------------------------------------------------
# Metrics


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


# ---------------------------------------------------------------------------------------------
# DICOMweb catalogue


@dataclass(frozen=True)
class StoredObject:
    """One file the node can serve: a received instance or one of its result objects."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str  # relative to the data directory
    instance_number: int | None
    source: str  # SOURCE_RECEIVED or SOURCE_RESULT


@dataclass(frozen=True)
class CatalogSeries:
    study_instance_uid: str
    series_instance_uid: str
    modality: str  # "" when only the file says (overlay results)
    series_number: int | None
    instance_count: int
    sample_path: str  # one of its files, for the header attributes
    source: str


@dataclass(frozen=True)
class CatalogStudy:
    study_instance_uid: str
    last_received_at: datetime
    series: tuple[CatalogSeries, ...]

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.series)

    @property
    def sample_path(self) -> str:
        """A received file if there is one: it carries the study's attributes as sent."""
        for s in self.series:
            if s.source == SOURCE_RECEIVED:
                return s.sample_path
        return self.series[0].sample_path if self.series else ""


def catalog_series(
    session: Session,
    study_uids: Collection[str] | None = None,
    series_uids: Collection[str] | None = None,
) -> list[CatalogSeries]:
    """Series holding files, received ones first (by series number), then result series."""
    received = (
        select(
            Study.study_instance_uid, Series.series_instance_uid, Series.modality,
            Series.series_number, func.count(Instance.id), func.min(Instance.path),
        )
        .join(Series, Series.study_id == Study.id)
        .join(Instance, Instance.series_id == Series.id)
        .group_by(Study.id, Study.study_instance_uid, Series.id)
        .order_by(Study.id, Series.series_number, Series.id)
    )
    results = (
        select(
            Study.study_instance_uid, ResultObject.series_instance_uid,
            func.min(ResultObject.kind), func.count(ResultObject.id), func.min(ResultObject.path),
        )
        .join(Job, ResultObject.job_id == Job.id)
        .join(Study, Job.study_id == Study.id)
        .group_by(Study.study_instance_uid, ResultObject.series_instance_uid)
        .order_by(func.min(ResultObject.id))
    )
    if study_uids is not None:
        received = received.where(Study.study_instance_uid.in_(list(study_uids)))
        results = results.where(Study.study_instance_uid.in_(list(study_uids)))
    if series_uids is not None:
        received = received.where(Series.series_instance_uid.in_(list(series_uids)))
        results = results.where(ResultObject.series_instance_uid.in_(list(series_uids)))
    out = [
        CatalogSeries(study, series, modality, number, count, path, SOURCE_RECEIVED)
        for study, series, modality, number, count, path in session.execute(received)
    ]
    seen = {s.series_instance_uid for s in out}
    for study, series, kind, count, path in session.execute(results):
        if series in seen:  # a result series UID equal to a received one: serve the received
            continue
        out.append(
            CatalogSeries(
                study, series, RESULT_KIND_MODALITY.get(kind, ""), None, count, path,
                SOURCE_RESULT,
            )
        )
    return out


def catalog_studies(
    session: Session, study_uids: Collection[str] | None = None
) -> list[CatalogStudy]:
    """Studies with files, most recently received first, each with its series."""
    query = select(Study.study_instance_uid, Study.last_received_at).order_by(
        Study.last_received_at.desc(), Study.id.desc()
    )
    if study_uids is not None:
        query = query.where(Study.study_instance_uid.in_(list(study_uids)))
    order = list(session.execute(query))
    by_study: dict[str, list[CatalogSeries]] = defaultdict(list)
    for series in catalog_series(session, study_uids):
        by_study[series.study_instance_uid].append(series)
    return [
        CatalogStudy(uid, received_at, tuple(by_study[uid]))
        for uid, received_at in order
        if by_study.get(uid)
    ]


def catalog_instances(
    session: Session,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uids: Collection[str] | None = None,
) -> list[StoredObject]:
    """Files of a study, a series or given instances: received ones in instance-number order,
    then result objects in the order they were created."""
    received = (
        select(
            Study.study_instance_uid, Series.series_instance_uid, Instance.sop_instance_uid,
            Instance.sop_class_uid, Instance.path, Instance.instance_number,
        )
        .join(Series, Instance.series_id == Series.id)
        .join(Study, Series.study_id == Study.id)
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    results = (
        select(
            Study.study_instance_uid, ResultObject.series_instance_uid,
            ResultObject.sop_instance_uid, ResultObject.sop_class_uid, ResultObject.path,
        )
        .join(Job, ResultObject.job_id == Job.id)
        .join(Study, Job.study_id == Study.id)
        .order_by(ResultObject.id)
    )
    if study_uid is not None:
        received = received.where(Study.study_instance_uid == study_uid)
        results = results.where(Study.study_instance_uid == study_uid)
    if series_uid is not None:
        received = received.where(Series.series_instance_uid == series_uid)
        results = results.where(ResultObject.series_instance_uid == series_uid)
    if sop_uids is not None:
        received = received.where(Instance.sop_instance_uid.in_(list(sop_uids)))
        results = results.where(ResultObject.sop_instance_uid.in_(list(sop_uids)))
    out = [
        StoredObject(st, se, sop, cls, path, number, SOURCE_RECEIVED)
        for st, se, sop, cls, path, number in session.execute(received)
    ]
    seen = {o.sop_instance_uid for o in out}
    out.extend(
        StoredObject(st, se, sop, cls, path, None, SOURCE_RESULT)
        for st, se, sop, cls, path in session.execute(results)
        if sop not in seen
    )
    return out
