"""Verdicts and local validation on the web: ``POST /api/jobs/{id}/verdict`` and its form on the
study page (radiologists only), ``GET /api/jobs/{id}/verdicts``, ``GET /api/validation`` and
the validation page ``/node/validation``."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dicomnode.review.validation import validation_report
from dicomnode.review.verdicts import (
    MAX_COMMENT,
    MAX_MISSED,
    VerdictError,
    VerdictInput,
    VerdictRecorder,
    verdicts_of_jobs,
)
from dicomnode.web.api import plain
from dicomnode.web.auth import local_target, require_role
from dicomnode.web.context import WebContext, get_ctx, get_session, release

log = logging.getLogger(__name__)

REVIEWER_ROLES = ("radiologist",)
FORM_BODY_MAX_BYTES = 16384
MAX_FINDINGS = 500

router = APIRouter(tags=["verdicts"])
SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[WebContext, Depends(get_ctx)]


class VerdictBody(BaseModel):
    classification: Literal["agree", "disagree"]
    findings: dict[str, Literal["accept", "reject"]] = Field(default_factory=dict,
                                                              max_length=MAX_FINDINGS)
    missed_findings: int = Field(default=0, ge=0, le=MAX_MISSED)
    comment: str = Field(default="", max_length=MAX_COMMENT)

    def as_input(self) -> VerdictInput:
        try:
            findings = {int(k): v == "accept" for k, v in self.findings.items()}
        except ValueError as exc:
            raise HTTPException(422, "findings keys must be lesion numbers") from exc
        return VerdictInput(self.classification == "agree", findings, self.missed_findings,
                            self.comment)


def _record(ctx: WebContext, job_id: int, reader: str, body: VerdictBody) -> dict[str, Any]:
    recorder = VerdictRecorder(ctx.settings, ctx.sessions, ctx.storage)
    try:
        return plain(recorder.record(job_id, reader, body.as_input()))
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from exc
    except VerdictError as exc:
        raise HTTPException(409, str(exc)) from exc


@router.post("/api/jobs/{job_id}/verdict")
async def post_verdict(job_id: int, body: VerdictBody, request: Request,
                       ctx: CtxDep) -> dict[str, Any]:
    """A radiologist's verdict on the job's classification and each lesion; written to the
    PACS as a verified review SR."""
    reader = require_role(request, *REVIEWER_ROLES)
    return {"verdict": await run_in_threadpool(_record, ctx, job_id, reader.name, body)}


@router.get("/api/jobs/{job_id}/verdicts")
def get_verdicts(job_id: int, session: SessionDep) -> dict[str, Any]:
    return {"job_id": job_id, "verdicts": plain(verdicts_of_jobs(session, [job_id]).get(job_id,
                                                                                         []))}


@router.get("/api/validation")
def validation(session: SessionDep) -> dict[str, Any]:
    """Per model name and version: verdicts, agreement figures, overall and per month."""
    return validation_report(session)


def _form_body(raw: bytes) -> VerdictBody:
    fields = parse_qs(raw[:FORM_BODY_MAX_BYTES].decode("utf-8", "replace"))

    def first(name: str, default: str = "") -> str:
        return (fields.get(name) or [default])[0]

    findings = {k[len("lesion-"):]: v[0] for k, v in fields.items()
                if k.startswith("lesion-") and v and v[0] in ("accept", "reject")}
    try:
        return VerdictBody.model_validate({
            "classification": first("classification"), "findings": findings,
            "missed_findings": int(first("missed_findings", "0") or 0),
            "comment": first("comment")})
    except ValueError as exc:
        raise HTTPException(422, "the verdict form is incomplete or invalid") from exc


@router.post("/node/jobs/{job_id}/verdict", include_in_schema=False)
async def verdict_form(job_id: int, request: Request, ctx: CtxDep) -> Response:
    """The verdict form of the study page; back to the page with a notice."""
    reader = require_role(request, *REVIEWER_ROLES)
    raw = await request.body()
    target = local_target(parse_qs(raw[:FORM_BODY_MAX_BYTES].decode("utf-8", "replace"))
                          .get("next", [""])[0], "/node/")
    try:
        body = _form_body(raw)
        await run_in_threadpool(_record, ctx, job_id, reader.name, body)
    except HTTPException as exc:
        params = {"notice": "refused", "reason": str(exc.detail)}
        return RedirectResponse(f"{target}?{urlencode(params)}", status_code=303)
    params = {"notice": "verdict-recorded", "id": str(job_id)}
    return RedirectResponse(f"{target}?{urlencode(params)}", status_code=303)


@router.get("/node/validation", response_class=HTMLResponse, include_in_schema=False)
def validation_page(request: Request, session: SessionDep) -> Response:
    from dicomnode.web.pages import render

    report = validation_report(session)
    release(session)
    return render(request, "validation.html", {"report": report})
