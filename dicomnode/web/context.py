"""What every request handler of the web app reaches: settings, the session factory, storage,
caches; held on ``app.state.ctx`` and handed to handlers through FastAPI dependencies."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.receiving.storage import Storage
from dicomnode.web.dicomjson import HeaderCache


@dataclass
class WebContext:
    settings: Settings
    sessions: sessionmaker[Session]
    storage: Storage
    headers: HeaderCache
    ohif_dir: Path | None  # None: no prebuilt viewer found
    receiver_alive: Callable[[], bool] | None = None
    # (alive, configured) local worker processes; None where this process supervises none.
    workers_alive: Callable[[], tuple[int, int]] | None = None


def get_ctx(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


def get_session(request: Request) -> Iterator[Session]:
    """One database session per request, closed when the request is done."""
    with get_ctx(request).sessions() as session:
        yield session


def public_root(settings: Settings) -> str:
    """Where clients reach the web app: ``[web] base_url``, else ``http://<host>:<port>``.
    Never the request's Host header, which the client chooses."""
    web = settings.web
    if web.base_url:
        return web.base_url.rstrip("/")
    host = "localhost" if web.host in ("0.0.0.0", "::", "") else web.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{web.port}"


def dicomweb_base(request: Request) -> str:
    """This node's DICOMweb root (for RetrieveURL, BulkDataURI), from the configuration."""
    return public_root(get_ctx(request).settings) + "/dicom-web"


def release(session: Session) -> None:
    """End the request's current transaction now, before slow file work or a write.

    On SQLite every transaction starts with BEGIN IMMEDIATE (``dicomnode.db.engine``), so even
    a read holds the write lock until it ends: the receiver would wait behind a web request.
    The session stays usable; its next query begins a new, short transaction.
    """
    session.close()
