"""The JSON API under ``/api``: studies (series, skip reasons, jobs), a study's timeline, jobs,
exports, totals, and the two operator actions (retry an export, requeue a job).

Times are UTC in ISO 8601 with a ``Z``. No patient names: the database holds none.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from sqlalchemy.orm import Session

from dicomnode.db.audit import record_action
from dicomnode.db.exports import ExportLog
from dicomnode.db.models import ExportState, JobState
from dicomnode.db.queries.counts import totals
from dicomnode.db.queries.exports import export_state, export_view, list_exports
from dicomnode.db.queries.jobs import job_detail, job_state, list_jobs
from dicomnode.db.queries.studies import list_studies, study_detail, study_timeline
from dicomnode.db.queries.views import ExportView, JobView
from dicomnode.db.queue import JobQueue
from dicomnode.web.auth import require_role
from dicomnode.web.context import WebContext, get_ctx, get_session, release

MAX_PAGE = 1000
OPERATOR_ROLES = ("operator", "admin")  # who may retry exports and requeue jobs

router = APIRouter(prefix="/api", tags=["api"])
log = logging.getLogger(__name__)

SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[WebContext, Depends(get_ctx)]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
Offset = Annotated[int, Query(ge=0)]
T = TypeVar("T")


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat() + "Z"


def plain(value: Any) -> Any:
    """Dataclasses, tuples and datetimes as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return iso(value)
    return value


class ActionRefusedError(Exception):
    """An operator action that does not apply to the object's current state."""


def _audit(
    ctx: WebContext, session: Session, actor: str, action: str, message: str,
    *, job_id: int | None = None, export_id: int | None = None,
) -> None:
    """After an operator action succeeded: end the request's read transaction, then write the
    audit event and the log line (both say what was done and by which role, never to whom)."""
    release(session)
    record_action(ctx.sessions, actor, action, message, job_id=job_id, export_id=export_id)
    log.info("%s by an operator", message)


def retry_export(ctx: WebContext, session: Session, export_id: int, actor: str) -> ExportView:
    """Send a failed (or already sent) export again; refused while it is being sent."""
    state = export_state(session, export_id)
    if state is None:
        raise LookupError(f"export {export_id} not found")
    if state == ExportState.SENDING:
        raise ActionRefusedError(f"export {export_id} is being sent right now")
    release(session)
    ExportLog(ctx.sessions).retry(export_id)
    view = export_view(session, export_id)
    if view is None:
        raise LookupError(f"export {export_id} not found")
    _audit(ctx, session, actor, "export-retry", f"export {export_id} sent again",
           export_id=export_id)
    return view


def retry_job_exports(
    ctx: WebContext, session: Session, job_id: int, destination: str, actor: str
) -> int:
    """Send every failed export of a job to ``destination`` again; refused when none failed."""
    if job_state(session, job_id) is None:
        raise LookupError(f"job {job_id} not found")
    release(session)
    count = ExportLog(ctx.sessions).retry_failed(job_id, destination)
    if count == 0:
        raise ActionRefusedError(f"job {job_id} has no failed export to {destination}")
    _audit(ctx, session, actor, "export-retry",
           f"{count} failed export(s) of job {job_id} to {destination[:64]} sent again",
           job_id=job_id)
    return count


def requeue_job(ctx: WebContext, session: Session, job_id: int, actor: str) -> JobView:
    """Run a failed or finished job again; refused while a worker holds it."""
    release(session)
    queue = JobQueue.configured(ctx.sessions, ctx.settings.worker)
    if not queue.requeue(job_id):  # LookupError when there is no such job
        raise ActionRefusedError(f"job {job_id} is running")
    view = job_detail(session, job_id)
    if view is None:
        raise LookupError(f"job {job_id} not found")
    _audit(ctx, session, actor, "job-requeue", f"job {job_id} queued again", job_id=job_id)
    return view


def found(value: T | None, what: str) -> T:
    """``value``, or a 404 "<what> not found" when the query found nothing."""
    if value is None:
        raise HTTPException(status_code=404, detail=f"{what} not found")
    return value


@router.get("/counts")
def counts(session: SessionDep) -> dict[str, Any]:
    """Studies, series, instances; jobs and exports by state."""
    return totals(session)


@router.get("/studies")
def studies(session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> dict[str, Any]:
    """Studies, most recently received first, with their status and export counts."""
    rows = list_studies(session, limit=limit, offset=offset)
    return {"limit": limit, "offset": offset, "studies": plain(rows)}


@router.get("/studies/{study_uid}")
def study(study_uid: str, session: SessionDep) -> dict[str, Any]:
    """One study: summary, series with skip reasons, jobs with results and exports, timeline."""
    return plain(found(study_detail(session, study_uid), "study"))


@router.get("/studies/{study_uid}/timeline")
def timeline(study_uid: str, session: SessionDep) -> dict[str, Any]:
    """The study's events, oldest first: received, complete, job, each export."""
    events = found(study_timeline(session, study_uid), "study")
    return {"study_instance_uid": study_uid, "events": plain(events)}


@router.get("/jobs")
def jobs(
    session: SessionDep, state: JobState | None = None, limit: Limit = 50, offset: Offset = 0
) -> dict[str, Any]:
    """Jobs, newest first: state, attempts, error, result objects and their exports."""
    rows = list_jobs(session, state=state, limit=limit, offset=offset)
    return {"limit": limit, "offset": offset, "jobs": plain(rows)}


@router.get("/jobs/{job_id}")
def job(job_id: int, session: SessionDep) -> dict[str, Any]:
    return plain(found(job_detail(session, job_id), "job"))


@router.get("/exports")
def exports(
    session: SessionDep,
    state: Annotated[list[ExportState] | None, Query()] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> dict[str, Any]:
    """Exports, newest first: state, attempts, last DIMSE status and error; ``?state=failed``."""
    rows = list_exports(session, states=state or (), limit=limit, offset=offset)
    return {"limit": limit, "offset": offset, "exports": plain(rows)}


@contextmanager
def _as_http_errors() -> Iterator[None]:
    """An operator action's refusals as HTTP errors: 404 for what is not there, 409 for what
    its state does not allow."""
    try:
        yield
    except LookupError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except ActionRefusedError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc


@router.post("/exports/{export_id}/retry")
def retry(export_id: int, request: Request, session: SessionDep, ctx: CtxDep) -> dict[str, Any]:
    """Operator action: send the export again now (state back to pending, attempts to 0)."""
    who = require_role(request, *OPERATOR_ROLES)
    with _as_http_errors():
        view = retry_export(ctx, session, export_id, who.name)
    return {"export": plain(view)}


@router.post("/jobs/{job_id}/exports/retry")
def retry_exports(
    job_id: int, destination: Annotated[str, Query(min_length=1)], request: Request,
    session: SessionDep, ctx: CtxDep,
) -> dict[str, Any]:
    """Operator action: send every failed export of the job to ``destination`` again now."""
    who = require_role(request, *OPERATOR_ROLES)
    with _as_http_errors():
        count = retry_job_exports(ctx, session, job_id, destination, who.name)
    return {"job_id": job_id, "destination": destination, "queued": count}


@router.post("/jobs/{job_id}/requeue")
def requeue(job_id: int, request: Request, session: SessionDep, ctx: CtxDep) -> dict[str, Any]:
    """Operator action: queue the job again (same result UIDs, same result objects)."""
    who = require_role(request, *OPERATOR_ROLES)
    with _as_http_errors():
        view = requeue_job(ctx, session, job_id, who.name)
    return {"job": plain(view)}
