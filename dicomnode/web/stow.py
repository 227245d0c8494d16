"""STOW-RS into the node (PS3.18 §10.5), for one purpose only: the results of a workitem, sent by
the remote performer that holds it.

``POST /dicom-web/studies[/{study}]`` with ``multipart/related; type="application/dicom"`` and
the header ``Transaction-UID: <the UID that claimed the workitem>``. The body is streamed into
temporary files (bounded), each part is checked (a DICOM file of the workitem's study whose SOP
Instance UID is no other job's result) and moved into the job's results, named by its SOP
Instance UID: sending the same objects again replaces them. Nothing is exported until the
performer sets the workitem COMPLETED (``dicomnode.jobs.remote_jobs``).

Answers: 200 (all stored), 202 (some refused), 409 (none stored, or the transaction does not
hold a workitem IN PROGRESS), 400 (no Transaction-UID), 415 (not multipart DICOM); the body is
the DICOM JSON store response (Referenced SOP Sequence, Failed SOP Sequence). With
``[web] dicomweb = "proxy"`` only requests with a Transaction-UID are taken here; the others go
on to the PACS.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Annotated, BinaryIO

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydicom import Dataset
from starlette.routing import Match
from starlette.types import Scope

from dicomnode.jobs.remote_jobs import RemoteJobs, StoredResult, WorkitemConflictError
from dicomnode.receiving.storage import TMP_DIR, is_valid_uid
from dicomnode.web.context import WebContext, dicomweb_base, get_ctx
from dicomnode.web.dicomjson import to_json
from dicomnode.web.multipart import MultipartError, MultipartReader, boundary_of

log = logging.getLogger(__name__)

TRANSACTION_HEADER = "transaction-uid"
MAX_STOW_BYTES = 4 * 1024**3
MAX_STOW_PARTS = 10_000
MAX_PART_BYTES = 2 * 1024**3
DICOM_JSON = "application/dicom+json"

router = APIRouter(prefix="/dicom-web", tags=["stow-rs"])
CtxDep = Annotated[WebContext, Depends(get_ctx)]


class _PartFile:
    """One part's payload written to a temporary file of the data directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_PART_BYTES:
            raise MultipartError(f"a part exceeds {MAX_PART_BYTES} bytes")
        self._fh.write(data)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()


def _check_content_type(value: str) -> str:
    lowered = value.lower()
    if not lowered.startswith("multipart/related") or "application/dicom" not in lowered:
        raise HTTPException(415, 'send multipart/related; type="application/dicom"')
    try:
        return boundary_of(value)
    except MultipartError as exc:
        raise HTTPException(400, str(exc)) from exc


async def _receive(request: Request, tmp_dir: Path, boundary: str) -> list[_PartFile]:
    parts: list[_PartFile] = []

    def open_part(headers: dict[str, str]) -> _PartFile:
        kind = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        if kind != "application/dicom":
            raise MultipartError(f"part of type {kind[:60]!r}: only application/dicom")
        part = _PartFile(tmp_dir / f"{uuid.uuid4().hex}.part")
        parts.append(part)
        return part

    reader = MultipartReader(boundary, open_part, max_parts=MAX_STOW_PARTS,
                             max_bytes=MAX_STOW_BYTES)
    try:
        async for chunk in request.stream():
            reader.feed(chunk)
        reader.finish()
    except MultipartError as exc:
        _discard(parts)
        raise HTTPException(400, f"bad multipart body: {exc}") from exc
    except BaseException:
        _discard(parts)
        raise
    return parts


def _discard(parts: list[_PartFile]) -> None:
    for part in parts:
        part.close()
        part.path.unlink(missing_ok=True)


def _response(results: list[StoredResult], base: str, study_uid: str) -> Response:
    ds = Dataset()
    ds.RetrieveURL = f"{base}/studies/{study_uid}"
    stored, failed = [], []
    for r in results:
        item = Dataset()
        item.ReferencedSOPClassUID = r.sop_class_uid or "1.2.840.10008.5.1.4.1.1.7"
        item.ReferencedSOPInstanceUID = r.sop_instance_uid or "0.0"
        if r.failure is None:
            item.RetrieveURL = f"{base}/studies/{study_uid}/instances/{r.sop_instance_uid}"
            stored.append(item)
        else:
            item.FailureReason = r.failure
            failed.append(item)
    if stored:
        ds.ReferencedSOPSequence = stored
    if failed:
        ds.FailedSOPSequence = failed
    status = 200 if not failed else (202 if stored else 409)
    headers = {}
    if failed:
        why = "; ".join(sorted({r.why for r in results if r.failure is not None}))[:300]
        headers["Warning"] = f'299 dicomnode "{why}"'
    return Response(json.dumps(to_json(ds)), status_code=status, media_type=DICOM_JSON,
                    headers=headers)


async def _store(request: Request, ctx: WebContext, study: str | None) -> Response:
    boundary = _check_content_type(request.headers.get("content-type", ""))
    txn = request.headers.get(TRANSACTION_HEADER, "").strip()
    if not is_valid_uid(txn):
        raise HTTPException(400, "STOW-RS here accepts the results of a claimed workitem only: "
                                 "send the claiming Transaction UID in the Transaction-UID header")
    jobs = RemoteJobs(ctx.settings, ctx.sessions, ctx.storage)
    try:
        job_id, study_uid = await run_in_threadpool(jobs.holder, txn)
    except WorkitemConflictError as exc:
        raise HTTPException(409, str(exc), headers={"Warning": f'299 dicomnode "{exc}"'}) from exc
    if study is not None and study != study_uid:
        raise HTTPException(409, "the target study is not the workitem's study")
    parts = await _receive(request, ctx.storage.root / TMP_DIR, boundary)
    results = []
    for part in parts:
        results.append(await run_in_threadpool(jobs.store, txn, job_id, study_uid, part.path))
    try:
        await run_in_threadpool(jobs.holder, txn)  # still the holder after the upload?
    except WorkitemConflictError as exc:
        raise HTTPException(409, f"{exc} (lost during the upload)") from exc
    accepted = sum(r.failure is None for r in results)
    log.info("job %d: %d of %d result objects stored by remote transaction %s",
             job_id, accepted, len(results), txn)
    return _response(results, dicomweb_base(request), study_uid)


@router.post("/studies")
async def stow_studies(request: Request, ctx: CtxDep) -> Response:
    return await _store(request, ctx, None)


@router.post("/studies/{study}")
async def stow_study(study: str, request: Request, ctx: CtxDep) -> Response:
    if not is_valid_uid(study):
        raise HTTPException(400, "the study in the path is not a valid UID")
    return await _store(request, ctx, study)


class _TransactionRoute(APIRoute):
    """A route that matches only requests carrying a Transaction-UID header: with a DICOMweb
    proxy in front of the PACS, every other STOW-RS request goes on to the PACS."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        header = TRANSACTION_HEADER.encode()
        if match is not Match.NONE and not any(k == header for k, _ in scope.get("headers", [])):
            return Match.NONE, {}
        return match, child


proxy_mode_router = APIRouter(prefix="/dicom-web", tags=["stow-rs"],
                              route_class=_TransactionRoute)
proxy_mode_router.add_api_route("/studies", stow_studies, methods=["POST"])
proxy_mode_router.add_api_route("/studies/{study}", stow_study, methods=["POST"])
