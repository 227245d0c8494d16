"""Running the web app with uvicorn in a background thread of ``dicomnode serve``.

The listening socket is bound in the caller's thread, so a port already in use fails
``start_web_server`` at once with a clear error instead of killing a thread later. Uvicorn does
not configure logging here (the CLI does) and keeps no access log: query strings may carry
search terms (QIDO-RS matching on patient attributes).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from sqlalchemy.orm import Session, sessionmaker

from dicomnode.config import Settings
from dicomnode.errors import ConfigError
from dicomnode.receiving.storage import Storage
from dicomnode.web.app import create_app

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
STOP_GRACE_S = 5


class WebServer:
    """One uvicorn server on an already bound socket, run by a daemon thread."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise ConfigError(f"[web] cannot listen on {host}:{port}: {exc}") from exc
        self._socket.listen(128)
        self.host, self.port = host, int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on",
            timeout_graceful_shutdown=STOP_GRACE_S, server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException:  # noqa: BLE001 - a dying server thread must say why
            log.exception("web server stopped unexpectedly")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"web server on {self.host}:{self.port} did not start")
            time.sleep(0.02)
        log.info("web app listening on http://%s:%d/", self.host, self.port)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=timeout_s)
        self._socket.close()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def server_listening(server: object | None) -> bool:
    """Whether a socketserver-style server (the DICOM receiver) still has its socket open."""
    sock = getattr(server, "socket", None)
    return sock is not None and sock.fileno() != -1


def start_web_server(
    settings: Settings,
    sessions: sessionmaker[Session],
    storage: Storage,
    *,
    receiver_alive: Callable[[], bool] | None = None,
    workers_alive: Callable[[], tuple[int, int]] | None = None,
) -> WebServer:
    """Build the app from ``settings.web`` and serve it; the caller stops it with ``stop()``."""
    app = create_app(
        settings, sessions, storage, receiver_alive=receiver_alive, workers_alive=workers_alive
    )
    server = WebServer(app, settings.web.host, settings.web.port)
    server.start()
    return server
