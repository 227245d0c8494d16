"""``/healthz``: is the database reachable and the receiver listening. No authentication, so
it says nothing about studies; a load balancer or systemd watchdog polls it."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from dicomnode import __version__
from dicomnode.web.context import get_ctx

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    """200 when healthy, 503 when the database cannot be reached or the receiver is down."""
    ctx = get_ctx(request)
    try:
        with ctx.sessions() as session:
            session.execute(text("SELECT 1"))
        database = True
    except SQLAlchemyError as exc:
        log.warning("health check: database unreachable: %s", exc)
        database = False
    receiver = ctx.receiver_alive() if ctx.receiver_alive is not None else None
    healthy = database and receiver is not False
    return JSONResponse(
        {
            "status": "ok" if healthy else "unhealthy",
            "database": database,
            "receiver": receiver,
            "version": __version__,
        },
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )
