"""dicomweb = "proxy": /dicom-web/* passed through to the PACS, streaming, same origin."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
from fastapi.testclient import TestClient

from dicomnode.web.app import create_app

from .conftest import TOKEN, NodeState, make_client

UPSTREAM = "http://pacs.example:8042/dicom-web"
FRAME = bytes(range(256)) * 64


class Chunks(httpx.AsyncByteStream):
    """A body that arrives in pieces, as from a socket."""

    def __init__(self, data: bytes, size: int = 1000) -> None:
        self.data, self.size = data, size

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), self.size):
            yield self.data[start:start + self.size]


def respond(status: int, body: bytes, content_type: str) -> httpx.Response:
    return httpx.Response(status, stream=Chunks(body), headers={"content-type": content_type})


def dicom_json(value: object) -> httpx.Response:
    return respond(200, json.dumps(value).encode(), "application/dicom+json")


class FakeUpstream:
    """An upstream DICOMweb server that records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.endswith("/metadata"):
            body = [{
                "00080018": {"vr": "UI", "Value": ["1.2.3.4"]},
                "00081190": {"vr": "UR", "Value": [f"{UPSTREAM}/studies/1.2"]},
                "7FE00010": {"vr": "OW", "BulkDataURI":
                             f"{UPSTREAM}/studies/1.2/series/1.3/instances/1.2.3.4/bulk/7FE00010"},
                "00540016": {"vr": "SQ", "Value": [{"00181074": {
                    "vr": "OB", "BulkDataURI": f"{UPSTREAM}/bulk/abc"}}]},
            }]
            return dicom_json(body)
        if "/frames/" in path:
            payload = (b"--b1\r\nContent-Type: application/octet-stream; transfer-syntax="
                       b"1.2.840.10008.1.2.1\r\n\r\n" + FRAME + b"\r\n--b1--\r\n")
            return respond(
                200, payload, 'multipart/related; type="application/octet-stream"; boundary=b1'
            )
        if path.endswith("/studies") and request.method == "POST":
            return dicom_json({"stored": len(request.content)})
        if path.endswith("/studies"):
            return dicom_json([])
        return respond(404, b"no such thing", "text/plain")


def proxy_client(state: NodeState, pacs: FakeUpstream | None, *, fail: bool = False) -> TestClient:
    web = replace(state.settings.web, dicomweb="proxy", pacs_dicomweb_url=UPSTREAM)
    settings = replace(state.settings, web=web)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    transport = httpx.MockTransport(refuse if fail else pacs)  # type: ignore[arg-type]
    return make_client(state, create_app(settings, state.sessions, state.storage,
                                         proxy_transport=transport))


def test_query_string_and_accept_pass_through_credentials_do_not(node_state: NodeState) -> None:
    pacs = FakeUpstream()
    client = proxy_client(node_state, pacs)
    response = client.get(
        f"/dicom-web/studies?PatientName=*smith*&includefield=00081030,00080060&limit=5"
        f"&token={TOKEN}",
        headers={"Accept": "application/dicom+json", "Cookie": "other=1"},
    )
    assert response.status_code == 200 and response.json() == []
    assert response.headers["content-type"] == "application/dicom+json"
    [sent] = pacs.requests
    assert str(sent.url) == (f"{UPSTREAM}/studies?PatientName=*smith*"
                             "&includefield=00081030,00080060&limit=5")
    assert sent.headers["accept"] == "application/dicom+json"
    assert "authorization" not in sent.headers and "cookie" not in sent.headers


def test_bulk_data_uris_point_back_at_the_configured_root(node_state: NodeState) -> None:
    client = proxy_client(node_state, FakeUpstream())
    [item] = client.get("/dicom-web/studies/1.2/series/1.3/metadata").json()
    assert item["7FE00010"]["BulkDataURI"] == \
        "http://127.0.0.1:8080/dicom-web/studies/1.2/series/1.3/instances/1.2.3.4/bulk/7FE00010"
    nested = item["00540016"]["Value"][0]["00181074"]["BulkDataURI"]
    assert nested == "http://127.0.0.1:8080/dicom-web/bulk/abc"
    assert item["00081190"]["Value"] == [f"{UPSTREAM}/studies/1.2"]  # nothing else rewritten


def test_binary_responses_stream_unchanged(node_state: NodeState) -> None:
    pacs = FakeUpstream()
    client = proxy_client(node_state, pacs)
    accept = "multipart/related; type=application/octet-stream; transfer-syntax=*"
    response = client.get("/dicom-web/studies/1.2/series/1.3/instances/1.4/frames/1",
                          headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"] == \
        'multipart/related; type="application/octet-stream"; boundary=b1'
    assert FRAME in response.content
    assert pacs.requests[0].headers["accept"] == accept
    assert client.get("/dicom-web/studies/9/series").status_code == 404  # status passes through


def test_post_body_is_forwarded(node_state: NodeState) -> None:
    pacs = FakeUpstream()
    client = proxy_client(node_state, pacs)
    response = client.post("/dicom-web/studies", content=b"x" * 1000,
                           headers={"Content-Type": "multipart/related; type=application/dicom"})
    assert response.json() == {"stored": 1000}
    assert pacs.requests[0].headers["content-type"].startswith("multipart/related")


def test_unreachable_pacs_is_a_bad_gateway(node_state: NodeState) -> None:
    client = proxy_client(node_state, None, fail=True)
    response = client.get("/dicom-web/studies")
    assert response.status_code == 502
    assert "unreachable" in json.dumps(response.json())


def test_proxy_still_needs_our_login(node_state: NodeState) -> None:
    pacs = FakeUpstream()
    anonymous = TestClient(proxy_client(node_state, pacs).app)
    assert anonymous.get("/dicom-web/studies").status_code == 401
    assert pacs.requests == []
