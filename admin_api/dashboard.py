"""The dashboard's built files, served from the admin API's origin so the browser needs no CORS.

Hashed assets are cached for a year; every other path that is not an API answers with index.html, so a
reload on /units/cs101/allocation lands in the app, which routes it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response

DEFAULT_DIST = Path(__file__).resolve().parents[1] / "frontend" / "dist"
_NOT_APP = ("api/", "auth/", "v1/", "healthz", "readyz", "metrics")


def mount_dashboard(app: FastAPI, dist: Path = DEFAULT_DIST) -> bool:
    """Serve `dist` when it has been built (`npm run build` in frontend/); False when it has not."""
    index = dist / "index.html"
    if not index.is_file():
        return False
    root = dist.resolve()

    @app.get("/{path:path}", include_in_schema=False)
    async def dashboard(request: Request, path: str) -> Response:
        if path.startswith(_NOT_APP):
            raise HTTPException(404, f"unknown path /{path}")
        candidate = (root / path).resolve()
        if path and candidate.is_file() and candidate.is_relative_to(root):
            immutable = path.startswith("assets/")
            cache = "public, max-age=31536000, immutable" if immutable else "no-cache"
            return FileResponse(candidate, headers={"Cache-Control": cache})
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    return True
