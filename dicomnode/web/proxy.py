"""Same-origin pass-through of ``/dicom-web/*`` to the PACS's DICOMweb root (``[web] dicomweb =
"proxy"``), so the browser talks to one origin and needs no CORS.

Requests and responses stream; the query string, the Accept and Content-Type headers and the
status pass through unchanged. The only rewrite is the origin of BulkDataURIs in DICOM JSON
answers, which the PACS builds from its own address: they are pointed back at this origin so
the browser fetches bulk data through the node as well. The node's own credentials (the
Authorization header, its cookie, a ``token`` query parameter) never reach the PACS; give the
PACS's credentials in ``pacs_dicomweb_url`` (``http://user:password@pacs/dicom-web``).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask

from dicomnode.web.context import dicomweb_base

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0
FORWARDED_REQUEST_HEADERS = ("accept", "content-type", "content-length", "range", "if-none-match",
                             "if-modified-since")
FORWARDED_RESPONSE_HEADERS = ("content-type", "content-length", "content-location", "warning",
                              "etag", "last-modified", "cache-control", "content-range",
                              "accept-ranges")
JSON_TYPES = ("application/dicom+json", "application/json")
MAX_JSON_BYTES = 512 * 1024 * 1024


def rewrite_bulk_uris(value: Any, upstream_root: str, local_root: str) -> Any:
    """Replace ``upstream_root`` at the start of every BulkDataURI with ``local_root``."""
    if isinstance(value, list):
        return [rewrite_bulk_uris(v, upstream_root, local_root) for v in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key == "BulkDataURI" and isinstance(item, str) and item.startswith(upstream_root):
                out[key] = local_root + item[len(upstream_root):]
            else:
                out[key] = rewrite_bulk_uris(item, upstream_root, local_root)
        return out
    return value


def _forwarded_query(raw_query: str) -> str:
    """The query string as sent, less the web app's own ``token`` parameter."""
    kept = [p for p in raw_query.split("&") if p and not p.startswith("token=")]
    return "&".join(kept)


class DicomwebProxy:
    """Forwards requests under ``/dicom-web`` to ``upstream`` with one shared HTTP client."""

    def __init__(self, upstream: str, transport: httpx.AsyncBaseTransport | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"pacs_dicomweb_url {upstream!r} is not an http(s) URL")
        self.upstream = upstream.rstrip("/")
        # BulkDataURIs carry the PACS's address without credentials.
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.upstream_public = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def forward(self, request: Request, path: str) -> Response:
        if any(segment in ("..", ".") for segment in path.split("/")):
            raise HTTPException(status_code=400, detail="bad path")
        url = f"{self.upstream}/{path}" if path else self.upstream
        query = _forwarded_query(request.url.query)
        if query:
            url += "?" + query
        headers = {k: v for k, v in request.headers.items() if k.lower() in
                   FORWARDED_REQUEST_HEADERS}
        headers["accept-encoding"] = "identity"  # bodies pass through (and are rewritten) as is
        body = request.stream() if request.method == "POST" else None
        upstream_request = self.client().build_request(
            request.method, url, headers=headers, content=body
        )
        try:
            upstream = await self.client().send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            log.warning("DICOMweb proxy: %s %s failed: %s", request.method, path, exc)
            raise HTTPException(
                status_code=502, detail="the PACS DICOMweb server is unreachable"
            ) from exc
        out_headers = {k: v for k, v in upstream.headers.items()
                       if k.lower() in FORWARDED_RESPONSE_HEADERS}
        ctype = upstream.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype in JSON_TYPES and upstream.status_code < 300:
            try:
                raw = await upstream.aread()
            finally:
                await upstream.aclose()
            return self._rewritten(request, raw, upstream.status_code, out_headers)
        return StreamingResponse(
            upstream.aiter_raw(),
            status_code=upstream.status_code,
            headers=out_headers,
            background=BackgroundTask(upstream.aclose),
        )

    def _rewritten(
        self, request: Request, raw: bytes, status: int, headers: dict[str, str]
    ) -> Response:
        headers.pop("content-length", None)
        if b"BulkDataURI" not in raw or len(raw) > MAX_JSON_BYTES:
            return Response(raw, status_code=status, headers=headers)
        try:
            document = json.loads(raw)
        except ValueError:
            return Response(raw, status_code=status, headers=headers)
        local_root = dicomweb_base(request)
        document = rewrite_bulk_uris(document, self.upstream_public, local_root)
        body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        return Response(body, status_code=status, headers=headers)


def proxy_router(proxy: DicomwebProxy) -> APIRouter:
    router = APIRouter(tags=["dicomweb"])

    @router.api_route("/dicom-web", methods=["GET", "HEAD", "POST"], include_in_schema=False)
    @router.api_route("/dicom-web/{path:path}", methods=["GET", "HEAD", "POST"])
    async def forward(request: Request, path: str = "") -> Response:
        return await proxy.forward(request, path)

    return router
