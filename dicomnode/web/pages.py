"""Server-rendered pages for operators (no build step): the dashboard, a study's page with its
timeline, series, results and exports, the retry/requeue forms, and the login form.

Pages live under ``/node/`` so that the OHIF viewer can own ``/``. Templates autoescape every
value; the forms post to this origin only (see ``dicomnode.web.auth``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dicomnode import __version__
from dicomnode.db.ai_verdict import ai_verdict
from dicomnode.db.dashboard import study_extras
from dicomnode.db.models import utcnow
from dicomnode.db.queries.counts import totals
from dicomnode.db.queries.exports import failed_export_groups
from dicomnode.db.queries.jobs import list_jobs
from dicomnode.db.queries.studies import list_studies, study_detail
from dicomnode.review.verdicts import verdicts_of_jobs
from dicomnode.web.api import (
    OPERATOR_ROLES,
    ActionRefusedError,
    requeue_job,
    retry_export,
    retry_job_exports,
)
from dicomnode.web.auth import COOKIE_NAME, local_target, principal_of, require_role
from dicomnode.web.context import WebContext, get_ctx, get_session, release
from dicomnode.web.resultgroups import group_results
from dicomnode.web.studydates import study_date
from dicomnode.web.timeline import fold_events

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).with_name("templates")
STUDIES_PER_PAGE = 50
JOBS_ON_DASHBOARD = 30
FAILED_EXPORTS_SHOWN = 100  # job x destination groups on the dashboard
ATTENTION_SHOWN = 10  # objects listed one by one per series and destination on a study page
LOGIN_BODY_MAX_BYTES = 8192
NOTICES = {
    "export-retried": ("ok", "Export {id} queued to be sent again."),
    "exports-retried": ("ok", "{count} failed export(s) of job {id} queued to be sent again."),
    "job-requeued": ("ok", "Job {id} queued to run again."),
    "refused": ("error", "Not done: {reason}"),
    "verdict-recorded": ("ok", "Verdict on job {id} recorded; its review SR is queued for export."),
}

router = APIRouter(include_in_schema=False)

SessionDep = Annotated[Session, Depends(get_session)]
CtxDep = Annotated[WebContext, Depends(get_ctx)]
NextUrl = Annotated[str | None, Query(alias="next")]


def _utc(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _ago(value: datetime | None) -> str:
    """A short relative age ("42 s ago", "3 min ago", "5 h ago", "2 d ago")."""
    if value is None:
        return ""
    seconds = max(0, int((utcnow() - value).total_seconds()))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 90 * 60:
        return f"{seconds // 60} min ago"
    if seconds < 36 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def _short_uid(value: str, keep: int = 10) -> str:
    """``1.2.826.0…4711.3``: the start and end of a long UID (the full one goes in a title)."""
    return value if len(value) <= 2 * keep + 1 else f"{value[:keep]}…{value[-keep:]}"


def _status_hex(value: int | None) -> str:
    return "" if value is None else f"0x{value:04X}"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return ""
    seconds = (end - start).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def make_templates() -> Jinja2Templates:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(utc=_utc, ago=_ago, short_uid=_short_uid, status_hex=_status_hex)
    env.globals.update(duration=_duration, version=__version__, group_results=group_results,
                       fold_events=fold_events, attention_shown=ATTENTION_SHOWN,
                       ai_verdict=ai_verdict)
    return Jinja2Templates(env=env)


def _render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    ctx = get_ctx(request)
    templates: Jinja2Templates = request.app.state.templates
    notice = None
    code = request.query_params.get("notice", "")
    if code in NOTICES:
        level, text = NOTICES[code]
        notice = (level, text.format(id=request.query_params.get("id", ""),
                                     count=request.query_params.get("count", ""),
                                     reason=request.query_params.get("reason", "")[:200]))
    base = {
        "viewer_installed": ctx.ohif_dir is not None,
        "auth_mode": ctx.settings.web.auth,
        "user": principal_of(request),
        "ae_title": ctx.settings.node.ae_title,
        "notice": notice,
        "now": utcnow(),
    }
    return templates.TemplateResponse(request, name, {**base, **context}, status_code=status)


render = _render  # for the pages of other modules (verdicts, validation)


@router.get("/node")
def node_root() -> Response:
    return RedirectResponse("/node/", status_code=307)


@router.get("/node/", response_class=HTMLResponse)
def dashboard(
    request: Request, session: SessionDep, offset: Annotated[int, Query(ge=0)] = 0
) -> Response:
    """Totals, failed exports, recent studies (classification, verdict, date) and jobs."""
    studies = list_studies(session, limit=STUDIES_PER_PAGE, offset=offset)
    extras = study_extras(session, [s.study_instance_uid for s in studies])
    root = get_ctx(request).storage.root
    context = {
        "totals": totals(session),
        "studies": studies,
        "extras": extras,
        "study_dates": {uid: study_date(root, e.instance_path) for uid, e in extras.items()},
        "offset": offset,
        "page_size": STUDIES_PER_PAGE,
        "jobs": list_jobs(session, limit=JOBS_ON_DASHBOARD),
        "failed_exports": failed_export_groups(session, limit=FAILED_EXPORTS_SHOWN),
    }
    release(session)
    return _render(request, "dashboard.html", context)


@router.get("/node/studies/{study_uid}", response_class=HTMLResponse)
def study_page(study_uid: str, request: Request, session: SessionDep) -> Response:
    """One study: timeline, series with skip reasons, jobs, result objects, exports."""
    detail = study_detail(session, study_uid)
    verdicts = verdicts_of_jobs(session, [j.job_id for j in detail.jobs]) if detail else {}
    release(session)
    if detail is None:
        return _render(request, "not_found.html", {"what": f"study {study_uid}"}, status=404)
    return _render(request, "study.html", {"detail": detail, "verdicts": verdicts})


def _back(target: str | None, study_uid: str, **params: str) -> Response:
    default = f"/node/studies/{study_uid}" if study_uid else "/node/"
    url = local_target(target, default)
    url += ("&" if "?" in url else "?") + urlencode(params)
    return RedirectResponse(url, status_code=303)


def _operator_action(
    request: Request, next_url: str | None, act: Callable[[str], tuple[str, dict[str, str]]]
) -> Response:
    """Run one operator button's action as the signed-in operator (the action audits and logs
    itself); back to the page the button was pressed on, with the notice ``act`` returns (with
    its study page as the default page) or the refusal's reason."""
    who = require_role(request, *OPERATOR_ROLES)
    try:
        study_uid, notice = act(who.name)
    except (LookupError, ActionRefusedError) as exc:
        return _back(next_url, "", notice="refused", reason=str(exc))
    return _back(next_url, study_uid, **notice)


@router.post("/node/exports/{export_id}/retry")
def retry_form(
    export_id: int, request: Request, session: SessionDep, ctx: CtxDep, next_url: NextUrl = None
) -> Response:
    """The retry button of a failed export; back to the page it was pressed on."""
    def act(actor: str) -> tuple[str, dict[str, str]]:
        view = retry_export(ctx, session, export_id, actor)
        return view.study_instance_uid, {"notice": "export-retried", "id": str(export_id)}
    return _operator_action(request, next_url, act)


@router.post("/node/jobs/{job_id}/retry-exports")
def retry_exports_form(
    job_id: int, destination: Annotated[str, Query(min_length=1)], request: Request,
    session: SessionDep, ctx: CtxDep, next_url: NextUrl = None,
) -> Response:
    """The "retry all" button of a job's failed exports to one destination."""
    def act(actor: str) -> tuple[str, dict[str, str]]:
        count = retry_job_exports(ctx, session, job_id, destination, actor)
        return "", {"notice": "exports-retried", "id": str(job_id), "count": str(count)}
    return _operator_action(request, next_url, act)


@router.post("/node/jobs/{job_id}/requeue")
def requeue_form(
    job_id: int, request: Request, session: SessionDep, ctx: CtxDep, next_url: NextUrl = None
) -> Response:
    """The requeue button of a failed or finished job."""
    def act(actor: str) -> tuple[str, dict[str, str]]:
        view = requeue_job(ctx, session, job_id, actor)
        return view.study_instance_uid, {"notice": "job-requeued", "id": str(job_id)}
    return _operator_action(request, next_url, act)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next_url: NextUrl = None) -> Response:
    target = local_target(next_url, "/node/")
    if not request.app.state.authenticator.page_logins:
        return RedirectResponse(target, status_code=303)
    return _render(request, "login.html", {"next": target, "error": ""})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    """Check the form (user name and password, or the token); on success open a new
    server-side session, set its cookie and go on."""
    authenticator = request.app.state.authenticator
    if not authenticator.page_logins:
        return RedirectResponse("/node/", status_code=303)
    body = await request.body()
    fields = parse_qs(body[:LOGIN_BODY_MAX_BYTES].decode("utf-8", "replace"))

    def field(name: str) -> str:
        return (fields.get(name) or [""])[0]

    secret = field("token") if authenticator.mode == "token" else field("password")
    target = local_target(field("next"), "/node/")
    principal = await run_in_threadpool(authenticator.login, field("username"), secret)
    if principal is None:
        log.warning("failed web login from %s", request.client.host if request.client else "?")
        return _render(request, "login.html",
                       {"next": target, "error": "Those credentials are not valid."}, status=401)
    session_secret = await run_in_threadpool(authenticator.users.open_session, principal)
    response = RedirectResponse(target, status_code=303)
    authenticator.set_cookie(response, session_secret, secure=request.url.scheme == "https")
    log.info("web login of %s", principal.name)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    """End the session on the server (its cookie is refused from now on) and in the browser."""
    secret = request.cookies.get(COOKIE_NAME, "")
    if secret:
        request.app.state.authenticator.users.end_session(secret)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response
