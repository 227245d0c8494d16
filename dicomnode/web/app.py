"""``create_app``: the node's web app — operators' pages, JSON API, /healthz, /metrics,
DICOMweb (local or proxied to the PACS) and the OHIF viewer — as one FastAPI application.

It reads the same database and data directory as the rest of the node; the caller owns the
session factory and the storage. Nothing connects or reads files when this module is imported.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from dicomnode import __version__
from dicomnode.config import Settings
from dicomnode.receiving.storage import Storage
from dicomnode.web import api, dicomweb, health, metrics, pages, stow, ups, verdicts
from dicomnode.web.auth import Authenticator, AuthMiddleware
from dicomnode.web.context import WebContext
from dicomnode.web.dicomjson import HeaderCache
from dicomnode.web.ohif import find_ohif_dir, ohif_router
from dicomnode.web.proxy import DicomwebProxy, proxy_router
from dicomnode.web.security import SecurityHeaders

log = logging.getLogger(__name__)

STATIC_DIR = pages.TEMPLATES_DIR.with_name("static")


def create_app(
    settings: Settings,
    sessions: sessionmaker[Session],
    storage: Storage,
    *,
    receiver_alive: Callable[[], bool] | None = None,
    proxy_transport: object | None = None,
    workers_alive: Callable[[], tuple[int, int]] | None = None,
) -> FastAPI:
    """Build the web app. Raises ConfigError when authentication is not configured safely
    (``auth = "token"`` without a token, ``basic`` without user and password).

    ``receiver_alive`` tells /healthz and /metrics whether the DICOM receiver listens;
    ``proxy_transport`` (an ``httpx.AsyncBaseTransport``) replaces the network in tests of the
    proxy mode.
    """
    web = settings.web
    authenticator = Authenticator(web, sessions)
    if web.auth == "none":
        log.warning("web app without authentication ([web] auth = 'none'): closed networks only")
    ohif_dir = find_ohif_dir(web.ohif_dir)
    proxy = (
        DicomwebProxy(web.pacs_dicomweb_url, transport=proxy_transport)  # type: ignore[arg-type]
        if web.dicomweb == "proxy"
        else None
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if proxy is not None:
            await proxy.aclose()

    app = FastAPI(
        title="Chest-CT DICOM node",
        version=__version__,
        docs_url=None,  # the interactive docs load scripts from a CDN; the schema is enough
        redoc_url=None,
        openapi_url="/api/openapi.json",
        lifespan=lifespan,
    )
    app.state.ctx = WebContext(
        settings=settings,
        sessions=sessions,
        storage=storage,
        headers=HeaderCache(storage.root),
        ohif_dir=ohif_dir,
        receiver_alive=receiver_alive,
        workers_alive=workers_alive,
    )
    app.state.authenticator = authenticator
    app.state.templates = pages.make_templates()
    app.state.job_timings = metrics.JobTimings()

    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(ups.router)  # UPS-RS and STOW-RS for remote workers, before a proxy
    app.include_router(stow.router if proxy is None else stow.proxy_mode_router)
    app.include_router(verdicts.router)
    if proxy is not None:
        app.include_router(proxy_router(proxy))
    else:
        app.include_router(dicomweb.router)
        app.include_router(dicomweb.wado_uri_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(ohif_router(ohif_dir))  # last: its fallback answers every other path

    app.add_middleware(AuthMiddleware, authenticator=authenticator)
    app.add_middleware(SecurityHeaders)
    log.info(
        "web app: auth %s, DICOMweb %s%s, viewer %s", web.auth, web.dicomweb,
        f" to {proxy.upstream_public}" if proxy is not None else "",
        ohif_dir if ohif_dir is not None else "not installed",
    )
    return app
