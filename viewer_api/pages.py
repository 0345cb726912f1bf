"""The radiologist's pages: the worklist and the review panel (plain HTML and a little JS).

No build step and nothing fetched from elsewhere: the files in ``viewer_api/static`` are served
as they are. The pages hold no patient data and need no token; their scripts call the API
with the bearer token the radiologist pasted once (kept in the tab's ``sessionStorage``), and
every value from the API is inserted as text, never as HTML. A strict Content-Security-Policy
(scripts and styles from our origin only, no inline code) backs that up.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel

from viewer_api.problems import NotFound

STATIC = Path(__file__).resolve().parent / "static"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

#: The pages, by route.
PAGES = {"/worklist": "worklist.html", "/review": "review.html"}
#: The scripts and styles the pages load from ``/ui/``.
ASSETS = frozenset(("pages.css", "api.js", "worklist.js", "review.js"))


class PageSettings(BaseModel):
    """What the pages need to know of the deployment (``GET /ui/settings.json``).

    Attributes
    ----------
    oidc_issuer
        Where tokens come from when the API verifies OIDC tokens; None with the embedded
        secret (tokens from ``pacs token create``).
    """

    oidc_issuer: str | None


def router(settings: PageSettings) -> APIRouter:
    """The pages' routes: ``/`` (to the worklist), ``/worklist``, ``/review``, ``/ui/*``."""
    routes = APIRouter(tags=["pages"], include_in_schema=False)

    @routes.get("/")
    def home() -> RedirectResponse:
        # OHIF's own study list would live here; the worklist takes its place.
        return RedirectResponse("/worklist", status_code=307)

    def page(name: str) -> FileResponse:
        return FileResponse(STATIC / name, media_type="text/html", headers=HEADERS)

    @routes.get("/worklist")
    def worklist() -> FileResponse:
        """The worklist: AI-flagged studies first; each opens in OHIF and in the review."""
        return page(PAGES["/worklist"])

    @routes.get("/review")
    def review() -> FileResponse:
        """The review panel of one study: ``/review?study=<StudyInstanceUID>``."""
        return page(PAGES["/review"])

    @routes.get("/ui/settings.json")
    def page_settings() -> Response:
        return Response(settings.model_dump_json(), media_type="application/json", headers=HEADERS)

    @routes.get("/ui/{name}")
    def asset(name: str) -> FileResponse:
        if name not in ASSETS:
            raise NotFound(f"no resource at /ui/{name}")
        return FileResponse(STATIC / name, headers=HEADERS)

    return routes
