"""UPS-RS (PS3.18 §11): the node's job queue as a worklist for remote task performers, the
subset IHE AI Workflow for Imaging (AIW-I) needs of a Task Performer:

- ``GET  /dicom-web/workitems?ProcedureStepState=SCHEDULED`` search (also ``limit``, ``offset``)
- ``GET  /dicom-web/workitems/{uid}`` retrieve
- ``PUT  /dicom-web/workitems/{uid}/state`` change state: IN PROGRESS (claim, with a new
  Transaction UID), COMPLETED or CANCELED (with the claiming Transaction UID)
- ``POST /dicom-web/workitems/{uid}?transaction=<Transaction UID>`` update: progress, output,
  failure reason; each accepted update renews the lease (the heartbeat).

Refusals: 400 for a malformed request, 404 for an unknown workitem, 409 (with a ``Warning``
header saying why) for a state change or update that does not fit the workitem's state or
the transaction holding it. A lease that expires returns the workitem to SCHEDULED.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydicom import Dataset
from sqlalchemy.orm import Session

from dicomnode.db import workitems as wi
from dicomnode.db.queue import JobQueue
from dicomnode.jobs.remote_jobs import RemoteJobs, WorkitemConflictError, WorkitemNotFoundError
from dicomnode.receiving.storage import is_valid_uid
from dicomnode.remote.workitem import Predecessor, WorkitemFacts, read_report, workitem_dataset
from dicomnode.web.context import WebContext, dicomweb_base, get_ctx, get_session, release
from dicomnode.web.dicomjson import to_json

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
MAX_BODY_BYTES = 1024 * 1024
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STATE_KEYS = ("ProcedureStepState", "00741000")

router = APIRouter(prefix="/dicom-web", tags=["ups-rs"])
SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[WebContext, Depends(get_ctx)]


def remote_jobs(ctx: WebContext) -> RemoteJobs:
    return RemoteJobs(ctx.settings, ctx.sessions, ctx.storage)


def _conflict(message: str) -> HTTPException:
    return HTTPException(
        status_code=409, detail=message, headers={"Warning": f'299 dicomnode "{message}"'}
    )


def _facts(view: wi.WorkitemView, priors: list[Any]) -> WorkitemFacts:
    return WorkitemFacts(
        uid=view.uid, state=view.state, study_instance_uid=view.study_instance_uid,
        series_instance_uid=view.series_instance_uid, instances=view.instances,
        scheduled_at=view.scheduled_at, uid_root=view.uid_root,
        predecessors=[
            Predecessor(p.study_instance_uid, p.series_instance_uid, p.sop_instance_uid,
                        p.sop_class_uid)
            for p in priors
        ],
    )


def _int_param(request: Request, name: str, default: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise HTTPException(400, f"{name} must be a non-negative integer")
    return min(int(raw), maximum)


@router.get("/workitems")
def search_workitems(request: Request, session: SessionDep) -> Response:
    """Search: workitems in the given Procedure Step States (all states without the key)."""
    states: list[str] = []
    ignored = []
    for key, value in request.query_params.multi_items():
        if key in STATE_KEYS:
            states += [v.strip().upper() for v in value.split(",") if v.strip()]
        elif key not in ("limit", "offset", "includefield", "fuzzymatching"):
            ignored.append(key[:40])
    bad = [s for s in states if s not in wi.UPS_STATES]
    if bad:
        raise HTTPException(400, f"unknown ProcedureStepState {bad[0][:20]!r}")
    limit = _int_param(request, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 1 << 31)
    views = wi.search_workitems(session, tuple(states), limit, offset)
    release(session)
    base = dicomweb_base(request)
    body = json.dumps([to_json(workitem_dataset(_facts(v, []), base)) for v in views])
    headers = {}
    if ignored:
        names = ", ".join(sorted(set(ignored)))[:200]
        headers["Warning"] = f'299 dicomnode "matching keys not supported and ignored: {names}"'
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get("/workitems/{uid}")
def retrieve_workitem(uid: str, request: Request, session: SessionDep, ctx: CtxDep) -> Response:
    view = wi.get_workitem(session, uid) if is_valid_uid(uid) else None
    release(session)
    if view is None:
        raise HTTPException(404, "no such workitem here")
    queue = JobQueue.configured(ctx.sessions, ctx.settings.worker)
    priors = queue.prior_reports(view.study_id, view.job_id)
    ds = workitem_dataset(_facts(view, priors), dicomweb_base(request))
    return Response(json.dumps([to_json(ds)]), media_type=DICOM_JSON)


async def _dataset(request: Request) -> Dataset:
    """The request's DICOM JSON data set (one object, or an array holding one)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"the data set exceeds {MAX_BODY_BYTES} bytes")
    try:
        raw = json.loads(body or b"null")
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if not isinstance(raw, dict):
            raise ValueError("expected one DICOM JSON data set")
        return Dataset.from_json(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise HTTPException(400, f"the body is not a DICOM JSON data set: {exc}"[:300]) from exc


def _transaction(value: object) -> str:
    if not is_valid_uid(value):
        raise HTTPException(400, "a valid Transaction UID (0008,1195) is required")
    return str(value)


@router.put("/workitems/{uid}/state")
async def change_state(uid: str, request: Request, ctx: CtxDep) -> Response:
    """Claim (IN PROGRESS), complete (COMPLETED) or fail (CANCELED) a workitem."""
    if not is_valid_uid(uid):
        raise HTTPException(404, "no such workitem here")
    ds = await _dataset(request)
    state = str(ds.get("ProcedureStepState", "")).strip().upper()
    txn = _transaction(ds.get("TransactionUID"))
    jobs = remote_jobs(ctx)
    action = {"IN PROGRESS": jobs.claim, "COMPLETED": jobs.complete, "CANCELED": jobs.cancel}
    if state not in action:
        raise HTTPException(400, "ProcedureStepState must be IN PROGRESS, COMPLETED or CANCELED")
    try:
        await run_in_threadpool(action[state], uid, txn)
    except WorkitemNotFoundError as exc:
        raise HTTPException(404, "no such workitem here") from exc
    except WorkitemConflictError as exc:
        raise _conflict(str(exc)) from exc
    return Response(status_code=200)


@router.post("/workitems/{uid}")
async def update_workitem(uid: str, request: Request, ctx: CtxDep) -> Response:
    """Update Workitem by the performer holding it; renews the lease."""
    if not is_valid_uid(uid):
        raise HTTPException(404, "no such workitem here")
    query = request.query_params
    txn = _transaction(query.get("transaction") or (request.url.query if "=" not in
                                                     request.url.query else ""))
    report = read_report(await _dataset(request))
    try:
        await run_in_threadpool(remote_jobs(ctx).update, uid, txn, report)
    except WorkitemNotFoundError as exc:
        raise HTTPException(404, "no such workitem here") from exc
    except WorkitemConflictError as exc:
        raise _conflict(str(exc)) from exc
    return Response(status_code=200)
