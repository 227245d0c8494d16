"""The catalogue of stored files the node serves over DICOMweb.

It lists two kinds of files: received instances (``spool/``, the ``instances`` table) and the
node's own result objects (``outbox/``, the ``result_objects`` table joined through ``jobs`` to
their study).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from dicomnode.db.models import Instance, Job, ResultObject, Series, Study

SOURCE_RECEIVED = "received"
SOURCE_RESULT = "result"
# Modality of a result series when its kind says it (OVERLAY: read from the file).
RESULT_KIND_MODALITY = {"SEG": "SEG", "SR": "SR"}


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

    @property
    def sample_path(self) -> str:
        """The file whose header describes it (its own), as for series and studies."""
        return self.path


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


def _narrowing(
    *filters: tuple[InstrumentedAttribute[str], InstrumentedAttribute[str],
                    str | Collection[str] | None],
) -> tuple[list[ColumnElement[bool]], list[ColumnElement[bool]]]:
    """The conditions that narrow the received-files and the result-objects queries alike: each
    filter is (column of the received query, column of the results query, wanted), where wanted
    is one UID, a collection of UIDs or None for no narrowing."""
    on_received: list[ColumnElement[bool]] = []
    on_results: list[ColumnElement[bool]] = []
    for received_column, result_column, wanted in filters:
        if wanted is None:
            continue
        if isinstance(wanted, str):
            on_received.append(received_column == wanted)
            on_results.append(result_column == wanted)
        else:
            on_received.append(received_column.in_(list(wanted)))
            on_results.append(result_column.in_(list(wanted)))
    return on_received, on_results


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
    on_received, on_results = _narrowing(
        (Study.study_instance_uid, Study.study_instance_uid, study_uids),
        (Series.series_instance_uid, ResultObject.series_instance_uid, series_uids),
    )
    received, results = received.where(*on_received), results.where(*on_results)
    out = [CatalogSeries(*row, source=SOURCE_RECEIVED) for row in session.execute(received)]
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
    on_received, on_results = _narrowing(
        (Study.study_instance_uid, Study.study_instance_uid, study_uid),
        (Series.series_instance_uid, ResultObject.series_instance_uid, series_uid),
        (Instance.sop_instance_uid, ResultObject.sop_instance_uid, sop_uids),
    )
    received, results = received.where(*on_received), results.where(*on_results)
    out = [StoredObject(*row, source=SOURCE_RECEIVED) for row in session.execute(received)]
    seen = {o.sop_instance_uid for o in out}
    out.extend(
        StoredObject(st, se, sop, cls, path, None, SOURCE_RESULT)
        for st, se, sop, cls, path in session.execute(results)
        if sop not in seen
    )
    return out
