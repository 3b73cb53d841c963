"""Browser-hardening headers on every answer of the admin API's origin (dashboard, /api, /auth).

The dashboard is a script-driven app holding an admin's session: a content security policy that allows
scripts only from this origin means injected markup cannot run code; `frame-ancestors 'none'` and
X-Frame-Options keep other sites from framing it (clickjacking an "issue key" button); Referrer-Policy
keeps dashboard URLs (unit ids, users) from leaking to other sites, while same-origin requests keep the
Referer the CSRF check falls back on; nosniff stops a browser from reading an export or a JSON answer as
a script. HSTS is sent only when the public URL is https: over plain http (the quick start) it would be
ignored, and on a name that also serves http it would break it.

Styles may be inline: the chart library sets style attributes, and a style cannot run code. The OpenAPI
page (/api/docs) is FastAPI's Swagger UI, which loads from its CDN with an inline bootstrap script; it gets
its own, looser script policy and holds no data of its own. A response that sets its own policy (the
SAML POST-binding page) keeps it.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

APP_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
DOCS_CDN = "https://cdn.jsdelivr.net"
DOCS_POLICY = (
    f"default-src 'self'; script-src 'self' 'unsafe-inline' {DOCS_CDN}; style-src 'self' 'unsafe-inline' "
    f"{DOCS_CDN}; img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
HSTS = "max-age=31536000"


def _common(https: bool) -> list[tuple[str, str]]:
    headers = [
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
    ]
    return headers + ([("Strict-Transport-Security", HSTS)] if https else [])


class SecurityHeaders:
    """ASGI middleware: adds the headers to each response start, leaving any the route set itself."""

    def __init__(self, app: ASGIApp, *, public_base_url: str, docs_prefix: str = "/api/docs") -> None:
        self.app = app
        https = public_base_url.lower().startswith("https://")
        self.docs_prefix = docs_prefix
        self.app_headers = [("Content-Security-Policy", APP_POLICY), *_common(https)]
        self.docs_headers = [("Content-Security-Policy", DOCS_POLICY), *_common(https)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        wanted = self.docs_headers if scope["path"].startswith(self.docs_prefix) else self.app_headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in wanted:
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
