"""Export rows: listed, one by id, failed ones grouped by job and destination."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicomnode.db.models import Export, ExportState, Job, ResultObject, Study
from dicomnode.db.queries.views import ExportView, FailedExportGroup
from dicomnode.db.rowcopy import record_from


def export_views_of_jobs(session: Session, job_ids: Collection[int]) -> dict[int, list[ExportView]]:
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
        out[obj.id].append(to_export_view(export, obj, study_uid))
    return out


def to_export_view(export: Export, obj: ResultObject, study_uid: str) -> ExportView:
    return record_from(
        ExportView, export, obj,
        export_id=export.id, study_instance_uid=study_uid, state=export.state.value,
    )


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
    return [to_export_view(e, r, uid) for e, r, uid in session.execute(query)]


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
    return to_export_view(row[0], row[1], row[2]) if row is not None else None


def export_state(session: Session, export_id: int) -> ExportState | None:
    return session.scalar(select(Export.state).where(Export.id == export_id))
