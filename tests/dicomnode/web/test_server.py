"""The web app under uvicorn in a background thread, as ``dicomnode serve`` runs it."""

from __future__ import annotations

import socket
from dataclasses import replace

import httpx
import pytest

from dicomnode.errors import ConfigError
from dicomnode.web.server import start_web_server
from tests.dicomnode.conftest import free_port
from tests.peers.multipart import parse_multipart

from .conftest import TOKEN, NodeState


def test_serves_over_http_and_stops(node_state: NodeState) -> None:
    settings = replace(node_state.settings,
                       web=replace(node_state.settings.web, host="127.0.0.1", port=free_port()))
    server = start_web_server(settings, node_state.sessions, node_state.storage,
                              receiver_alive=lambda: True)
    try:
        assert httpx.get(f"{server.url}/healthz").json()["checks"]["receiver"]["ok"] is True
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{server.url}/api/counts").status_code == 401
        series = httpx.get(
            f"{server.url}/dicom-web/studies/{node_state.study_a}/series/"
            f"{node_state.chest_series}",
            headers={**auth, "Accept": "multipart/related; type=application/dicom"},
        )
        payloads = parse_multipart(series.content, series.headers["content-type"])
        assert [p for _, p in payloads] == [
            node_state.path_of(ds.SOPInstanceUID).read_bytes() for ds in node_state.chest
        ]
        assert "x-content-type-options" in series.headers
        assert "server" not in series.headers
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz", timeout=2)


def test_port_in_use_is_a_clear_error(node_state: NodeState) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = replace(node_state.settings,
                           web=replace(node_state.settings.web, host="127.0.0.1", port=port))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            start_web_server(settings, node_state.sessions, node_state.storage)
