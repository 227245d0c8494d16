"""Headers every response carries: no MIME sniffing, no referrer, no framing by other sites,
and a Content-Security-Policy.

The node's own pages (``/node/``, ``/login``) get a strict policy: scripts, styles and forms
from this origin only, no inline script. The OHIF viewer (everything else that is a page) needs
inline boot scripts, eval for its bundled libraries, WebAssembly codecs and blob workers; it
still may only connect to this origin, and nobody may frame it.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

NODE_PAGE_PREFIXES = ("/node", "/login", "/static/")
NODE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
VIEWER_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval' 'wasm-unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self' blob: data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
)
COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def policy_for(path: str) -> str:
    return NODE_CSP if path.startswith(NODE_PAGE_PREFIXES) else VIEWER_CSP


class SecurityHeaders:
    """Adds the headers above to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = policy_for(scope["path"]).encode("ascii")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = list(message.get("headers", []))
                names = {name.lower() for name, _ in present}
                wanted = (*COMMON_HEADERS, (b"content-security-policy", csp))
                message["headers"] = present + [(k, v) for k, v in wanted if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)
