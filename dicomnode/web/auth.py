"""Who may use the web app: ``[web] auth = "users"``, ``"token"``, ``"basic"`` or ``"none"``.

users: people sign in with their name and password (``dicomnode users add``); a page session is
a random secret in an HttpOnly cookie, kept server-side (``dicomnode.db.users``), expiring, and
ended at logout. Programs send a user's HTTP basic credentials, or the machine ``[web] token``
(``Authorization: Bearer``), which may only read (API, DICOMweb, ``/metrics``). token: the one
token opens everything (``Authorization: Bearer``; the login form opens a server-side session).
basic: one configured user name and password. Credentials never travel in a URL.

Every request that passes carries a :class:`Principal` (``request.state.principal``): actions
are recorded under its name. Everything except ``/healthz``, the login form and the static
files needs authentication. Requests that change state and carry ambient credentials (cookie,
basic) must come from this origin: a cross-site form cannot act in a user's name.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from urllib.parse import quote

from fastapi import HTTPException
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomnode.config import WebSettings
from dicomnode.db.users import Principal, UserStore
from dicomnode.errors import ConfigError

log = logging.getLogger(__name__)

COOKIE_NAME = "dicomnode_session"
COOKIE_MAX_AGE_S = 12 * 3600
TOKEN_USER = "token"  # the name actions taken with the shared token are recorded under
MACHINE = Principal("machine", "machine")
PUBLIC_PATHS = frozenset({"/healthz", "/login", "/logout", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
# Paths answered to programs: a refusal is a 401, never a redirect to the login form.
PROGRAM_PREFIXES = ("/api/", "/dicom-web", "/metrics", "/wado")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MODES = ("users", "token", "basic", "none")
REALM = "dicomnode"


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or len(encoded) > 4096:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class Authenticator:
    """Checks one request's credentials against the configured scheme."""

    def __init__(self, settings: WebSettings, sessions: sessionmaker[Session]) -> None:
        self.mode = settings.auth
        if self.mode not in MODES:
            raise ConfigError(f"[web] auth {self.mode!r}: use one of {', '.join(MODES)}")
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
        self.users = UserStore(sessions, COOKIE_MAX_AGE_S,
                               token_user=TOKEN_USER if self.mode == "token" else None)
        self.page_logins = self.mode in ("users", "token")

    def token_ok(self, candidate: str) -> bool:
        return bool(self._token) and _same(candidate, self._token)

    def _basic(self, header: str) -> Principal | None:
        creds = _basic_credentials(header)
        if creds is None:
            return None
        user, password = creds
        if self.mode == "users":
            return self.users.verify(user, password)
        # Both compared, always: the time taken tells nothing about which one was wrong.
        user_ok = _same(user, self._username)
        password_ok = _same(password, self._password)
        return Principal(user, "admin") if user_ok and password_ok else None

    def authenticate(self, request: Request) -> tuple[Principal, str] | None:
        """Who the request acts for and how it proved it ("none", "bearer", "cookie",
        "basic"); None when it did not. Runs database queries: call it off the event loop."""
        if self.mode == "none":
            return Principal("anonymous", "admin"), "none"
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if self.mode in ("users", "token") and scheme.lower() == "bearer":
            if not self.token_ok(credential.strip()):
                return None
            return (MACHINE if self.mode == "users" else Principal(TOKEN_USER, "admin")), "bearer"
        if self.mode in ("users", "basic") and scheme.lower() == "basic":
            found = self._basic(header)
            return None if found is None else (found, "basic")
        cookie = request.cookies.get(COOKIE_NAME, "")
        if cookie and self.page_logins:
            session_user = self.users.session_user(cookie)
            if session_user is not None:
                return session_user, "cookie"
        return None

    def login(self, name: str, secret: str) -> Principal | None:
        """The principal a login form's fields open a session for; None when wrong."""
        if self.mode == "token":
            return Principal(TOKEN_USER, "admin") if self.token_ok(secret) else None
        if self.mode == "users":
            return self.users.verify(name, secret)
        return None

    def challenge(self) -> dict[str, str]:
        if self.mode in ("basic", "users"):
            return {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}

    def set_cookie(self, response: Response, secret: str, secure: bool) -> None:
        response.set_cookie(
            COOKIE_NAME, secret, max_age=COOKIE_MAX_AGE_S, path="/",
            httponly=True, samesite="lax", secure=secure,
        )


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def _is_program_path(path: str) -> bool:
    return path.startswith(PROGRAM_PREFIXES)


def _cross_site(request: Request) -> bool:
    """True when a browser says the request comes from another site (or cannot say where
    from). Sec-Fetch-Site first: with ``Referrer-Policy: no-referrer`` browsers send
    ``Origin: null`` on same-origin form posts, and scripts cannot forge Sec-Fetch-Site."""
    fetch_site = request.headers.get("sec-fetch-site", "")
    if fetch_site:
        return fetch_site not in ("same-origin", "none")
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


def principal_of(request: Request) -> Principal:
    """The principal the middleware admitted the request for."""
    found = getattr(request.state, "principal", None)
    return found if isinstance(found, Principal) else Principal("anonymous", "")


def require_role(request: Request, *roles: str) -> Principal:
    """The request's principal when its role is one of ``roles``; HTTP 403 otherwise."""
    principal = principal_of(request)
    if principal.role not in roles:
        raise HTTPException(
            status_code=403,
            detail=f"{principal.role or 'this user'} may not do this (needs {' or '.join(roles)})",
        )
    return principal


def _json(detail: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class AuthMiddleware:
    """Refuses unauthenticated requests before any route runs (pure ASGI, streams untouched)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = scope["path"]
        if _is_public(path):
            await self.app(scope, receive, send)
            return
        found = await run_in_threadpool(self.auth.authenticate, request)
        if found is None:
            await self._refuse(request)(scope, receive, send)
            return
        principal, how = found
        refusal = self._refusal(request, principal, how)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _refusal(self, request: Request, principal: Principal, how: str) -> Response | None:
        path = request.url.path
        if principal.role == "machine":
            if request.method not in SAFE_METHODS or not _is_program_path(path):
                return _json("the machine token may only read the API, DICOMweb and /metrics",
                             403)
            return None
        if request.method not in SAFE_METHODS and how != "bearer" and _cross_site(request):
            log.warning("refused cross-site %s %s", request.method, path)
            return _json("cross-site request refused", 403)
        return None

    def _refuse(self, request: Request) -> Response:
        wants_page = (
            self.auth.page_logins
            and request.method == "GET"
            and not _is_program_path(request.url.path)
            and "text/html" in request.headers.get("accept", "")
        )
        if wants_page:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        return _json("authentication required", 401, self.auth.challenge())
