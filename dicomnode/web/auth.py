"""Who may use the web app: ``[web] auth = "token"``, ``"basic"`` or ``"none"``.

token: ``Authorization: Bearer <token>`` for programs; for a browser, the login form (or a link
carrying ``?token=``) sets an HttpOnly cookie holding an HMAC of the token, so the viewer's own
DICOMweb requests are authorised too. basic: HTTP basic authentication with the configured
user name and password. Secrets are compared in constant time. Everything except ``/healthz``,
the login form and the stylesheet needs authentication; patient data never leaves without it.
Requests that change state and carry ambient credentials (cookie, basic) must come from this
origin: a cross-site form cannot retry exports in an operator's name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from urllib.parse import quote, urlencode

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomnode.config import WebSettings
from dicomnode.errors import ConfigError

log = logging.getLogger(__name__)

COOKIE_NAME = "dicomnode_session"
COOKIE_MAX_AGE_S = 12 * 3600
_COOKIE_MESSAGE = b"dicomnode web session v1"
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/logout", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
# Paths answered to programs: a refusal is a 401, never a redirect to the login form.
PROGRAM_PREFIXES = ("/api/", "/dicom-web", "/metrics", "/wado")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REALM = "dicomnode"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


class Authenticator:
    """Checks one request's credentials against the configured scheme."""

    def __init__(self, settings: WebSettings) -> None:
        self.mode = settings.auth
        if self.mode not in ("token", "basic", "none"):
            raise ConfigError(f"[web] auth {self.mode!r}: use 'token', 'basic' or 'none'")
        if self.mode == "token" and not settings.token:
            raise ConfigError(
                "[web] auth = 'token' but no token is set: set [web] token (or "
                "DICOMNODE_WEB_TOKEN) to a long random secret, or choose another auth scheme; "
                "the web app does not start open by accident"
            )
        if self.mode == "basic" and not (settings.username and settings.password):
            raise ConfigError("[web] auth = 'basic' needs both username and password")
        self._token = settings.token
        self._username = settings.username
        self._password = settings.password
        self.cookie_value = (
            hmac.new(settings.token.encode("utf-8"), _COOKIE_MESSAGE, hashlib.sha256).hexdigest()
            if self.mode == "token"
            else ""
        )

    def token_ok(self, candidate: str) -> bool:
        return self.mode == "token" and _same(candidate, self._token)

    def _basic_ok(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both compared, always: the time taken tells nothing about which one was wrong.
        user_ok = _same(user, self._username)
        password_ok = _same(password, self._password)
        return bool(sep) and user_ok and password_ok

    def authenticate(self, request: Request) -> str | None:
        """How the request proved itself: "none", "bearer", "cookie", "query" or "basic";
        None when it did not."""
        if self.mode == "none":
            return "none"
        header = request.headers.get("authorization", "")
        if self.mode == "basic":
            return "basic" if header and self._basic_ok(header) else None
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and self.token_ok(credential.strip()):
            return "bearer"
        cookie = request.cookies.get(COOKIE_NAME, "")
        if cookie and _same(cookie, self.cookie_value):
            return "cookie"
        query_token = request.query_params.get("token", "")
        if query_token and self.token_ok(query_token):
            return "query"
        return None

    def challenge(self) -> dict[str, str]:
        if self.mode == "basic":
            return {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}

    def set_cookie(self, response: Response, secure: bool) -> None:
        response.set_cookie(
            COOKIE_NAME, self.cookie_value, max_age=COOKIE_MAX_AGE_S, path="/",
            httponly=True, samesite="lax", secure=secure,
        )


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _is_program_path(path: str) -> bool:
    return path.startswith(PROGRAM_PREFIXES)


def _cross_site(request: Request) -> bool:
    """True when a browser says the request comes from another site."""
    if request.headers.get("sec-fetch-site", "") == "cross-site":
        return True
    origin = request.headers.get("origin")
    if origin is None:
        return False
    host = request.headers.get("host", "")
    return origin == "null" or URL(origin).netloc != host


def local_target(value: str | None, default: str = "/") -> str:
    """``value`` if it is a path on this site (no scheme, no host, no ``//``), else default."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    return value


class AuthMiddleware:
    """Refuses unauthenticated requests before any route runs (pure ASGI, streams untouched)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.auth.mode == "none":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = scope["path"]
        if _is_public(path):
            await self.app(scope, receive, send)
            return
        how = self.auth.authenticate(request)
        if how is None:
            await self._refuse(request)(scope, receive, send)
            return
        if request.method not in SAFE_METHODS and how != "bearer" and _cross_site(request):
            log.warning("refused cross-site %s %s", request.method, path)
            await JSONResponse({"detail": "cross-site request refused"}, status_code=403)(
                scope, receive, send
            )
            return
        if how == "query" and request.method == "GET" and not _is_program_path(path):
            # A browser link with ?token=: remember it in the cookie, drop it from the address.
            params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = path + (f"?{urlencode(params)}" if params else "")
            response = RedirectResponse(target, status_code=303)
            self.auth.set_cookie(response, secure=request.url.scheme == "https")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refuse(self, request: Request) -> Response:
        wants_page = (
            self.auth.mode == "token"
            and request.method == "GET"
            and not _is_program_path(request.url.path)
            and "text/html" in request.headers.get("accept", "")
        )
        if wants_page:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return JSONResponse(
            {"detail": "authentication required"}, status_code=401, headers=self.auth.challenge()
        )
