"""``/healthz``: the node's real state for a load balancer, an orchestrator or a watchdog.

No authentication, so it names checks and destinations, never a study. Each check is
``{"ok": bool, ...}``; the status is 200 when all pass and 503 with ``"failed"`` listing the
checks that did not:

* ``database``: a ``SELECT 1`` succeeds;
* ``receiver``: the DICOM receiver still listens (when the node runs one);
* ``disk``: free space of the data directory is above ``[node] min_free_disk_mb``;
* ``workers``: the supervisor's worker processes are all alive, and no running job has an
  expired lease (its worker stopped, wherever it ran);
* ``destinations``: no destination is retrying a failed attempt or failed more recently than
  it last accepted an object.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dicomnode import __version__
from dicomnode.db.healthchecks import failing_destinations, stalled_jobs
from dicomnode.db.models import utcnow
from dicomnode.web.context import WebContext, get_ctx

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

Check = dict[str, Any]


def _disk(ctx: WebContext) -> Check:
    reserve_mb = ctx.settings.node.min_free_disk_mb
    try:
        free_mb = shutil.disk_usage(ctx.storage.root).free // (1024 * 1024)
    except OSError as exc:
        return {"ok": False, "error": f"data directory unreadable: {exc.strerror}"}
    return {"ok": free_mb >= reserve_mb, "free_mb": free_mb, "reserve_mb": reserve_mb}


def _database_checks(ctx: WebContext) -> dict[str, Check]:
    """database, workers (stalled leases) and destinations: one session, or all fail."""
    names = [d.name for d in ctx.settings.destinations]
    try:
        with ctx.sessions() as session:
            session.execute(text("SELECT 1"))
            stalled = stalled_jobs(session, utcnow())
            failing = failing_destinations(session, names)
    except SQLAlchemyError as exc:
        log.warning("health check: database unreachable: %s", type(exc).__name__)
        unknown = {"ok": False, "error": "database unreachable"}
        return {"database": unknown, "workers": dict(unknown), "destinations": dict(unknown)}
    workers: Check = {"ok": stalled == 0, "stalled_jobs": stalled}
    if ctx.workers_alive is not None:
        alive, wanted = ctx.workers_alive()
        workers.update(ok=workers["ok"] and alive >= wanted, alive=alive, configured=wanted)
    return {
        "database": {"ok": True},
        "workers": workers,
        "destinations": {"ok": not failing, "failing": failing},
    }


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """200 when every check passes, 503 naming the ones that failed."""
    ctx = get_ctx(request)
    checks = _database_checks(ctx)
    checks["disk"] = _disk(ctx)
    if ctx.receiver_alive is not None:
        checks["receiver"] = {"ok": ctx.receiver_alive()}
    failed = sorted(name for name, check in checks.items() if not check["ok"])
    return JSONResponse(
        {
            "status": "degraded" if failed else "ok",
            "failed": failed,
            "checks": checks,
            "version": __version__,
        },
        status_code=503 if failed else 200,
        headers={"Cache-Control": "no-store"},
    )
