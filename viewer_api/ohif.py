"""The OHIF viewer (the prebuilt npm package ``@ohif/app``), served on the API's own origin.

The published ``dist/`` is served as it is, without a rebuild. Its ``index.html`` and bundles
address everything by absolute ``/`` paths (``window.PUBLIC_URL = "/"``), so:

- OHIF's files are served at the root by a catch-all route that answers only files that exist
  in the dist folder; it is registered after every other route, so it never shadows the API.
- OHIF's own routes are its modes' routes under ``routerBasename: '/'``: the basic viewer is
  ``/viewer``, and ``/viewer`` and everything below it answer ``index.html`` (the single-page
  app routes in the browser). OHIF's study list would be at ``/``; our worklist replaces it
  (``showStudyList: false``, and ``/`` is our page, see :mod:`viewer_api.pages`).
- ``/app-config.js`` is generated here: one DICOMweb data source, our ``/dicom-web``.

OHIF sends ``Authorization: Bearer`` on every DICOMweb request when the viewer URL carries
``?token=`` (OHIF's user-authentication service; the token is then removed from the address
bar). The static files themselves need no token: they hold no patient data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from viewer_api.dicomjson import PREFIX, public_root
from viewer_api.problems import NotFound, ServiceUnavailable

#: Where ``make install`` (scripts/fetch-ohif.sh) unpacks the viewer in a checkout.
DEFAULT_DIST = Path(__file__).resolve().parent.parent / "build" / "ohif"

#: Files of the dist that are never served: the package's own configuration (ours is
#: generated), its hosting rules, and the service worker (we run without one).
NOT_SERVED = frozenset(
    {"app-config.js", "google.js", "sw.js", "_headers", "_redirects", "serve.json"}
)

#: Paths answered with another file of the dist.
ALIASES = {"favicon.ico": "assets/favicon.ico"}

_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)

# Security headers on everything OHIF loads. The token travels in the viewer URL once, so no
# Referer may carry it anywhere; responses are never sniffed into another type.
COMMON_HEADERS = {"Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}


@dataclass(frozen=True)
class OhifDist:
    """An unpacked OHIF ``dist/`` folder, checked on construction.

    Parameters
    ----------
    root
        The folder holding ``index.html`` and the bundles.
    index_html
        ``index.html`` as published.
    content_security_policy
        The policy sent with ``index.html``: scripts from our origin and the page's own inline
        scripts (by hash); WebAssembly (the image codecs), workers and ``blob:`` URLs (images
        decoded in workers) from our origin; styles inline (OHIF's components set them).
        ``'unsafe-eval'`` too: OHIF's SEG loader (the ``ndarray`` package) compiles its array
        constructors with ``new Function``, and without it no segmentation loads. The policy
        still allows no script from another origin and no inline script but index.html's own.
    """

    root: Path
    index_html: bytes
    content_security_policy: str

    @classmethod
    def open(cls, root: Path) -> OhifDist | None:
        """The dist at *root*, or None when it is not there (``make install`` fetches it)."""
        index = root / "index.html"
        if not index.is_file():
            return None
        html = index.read_bytes()
        return cls(root.resolve(), html, viewer_policy(html))

    def file(self, path: str) -> Path | None:
        """The dist file at URL path *path*, or None: only regular files inside the folder,
        no hidden names, nothing in :data:`NOT_SERVED`, no NUL or other control character."""
        parts = path.split("/")
        if not path or any(ord(c) < 0x20 or c == "\x7f" for c in path):
            return None
        if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
            return None
        if path in NOT_SERVED:
            return None
        candidate = (self.root / path).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate


def viewer_policy(index_html: bytes) -> str:
    """The Content-Security-Policy for OHIF's ``index.html``, its inline scripts by hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(body).digest()).decode() + "'"
        for body in _INLINE_SCRIPT.findall(index_html)
    )
    return "; ".join(
        (
            "default-src 'self'",
            f"script-src 'self' {hashes} 'unsafe-eval' 'wasm-unsafe-eval'",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "font-src 'self' data:",
            "connect-src 'self' data: blob:",
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )


def app_config(root: str) -> dict[str, Any]:
    """OHIF's ``window.config`` for an API whose public root is *root*.

    One DICOMweb data source (our QIDO-RS/WADO-RS, which support include fields and
    wildcards); pixel data by WADO-RS frames; thumbnails from our ``/thumbnail`` fetched with
    the bearer token (``thumbnailRequestStrategy: 'fetch'``); a study's series metadata loaded
    as needed (lazy); no investigational-use dialog, no study list (our worklist is it).
    """
    dicomweb = root + PREFIX
    return {
        "routerBasename": "/",
        "showStudyList": False,
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumberOfWebWorkers": 3,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "pacs",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "pacs",
                "configuration": {
                    "friendlyName": "PACS-AI",
                    "name": "pacs",
                    "qidoRoot": dicomweb,
                    "wadoRoot": dicomweb,
                    "wadoUriRoot": root + "/wado",
                    "qidoSupportsIncludeField": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": True,
                    "supportsReject": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "staticWado": False,
                    "bulkDataURI": {"enabled": True},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }


def router(dist: OhifDist | None) -> APIRouter:
    """The routes serving OHIF from *dist* (None: not installed, the viewer answers 503).

    Include it last: its catch-all answers every GET no earlier route took.
    """
    routes = APIRouter(tags=["viewer"], include_in_schema=False)

    def installed() -> OhifDist:
        if dist is None:
            raise ServiceUnavailable("the OHIF viewer is not installed here (run: make install)")
        return dist

    @routes.get("/app-config.js")
    def config(request: Request) -> Response:
        body = "window.config = " + json.dumps(app_config(public_root(request)), indent=2) + ";\n"
        headers = {**COMMON_HEADERS, "Cache-Control": "no-cache"}
        return Response(body, media_type="text/javascript", headers=headers)

    def index() -> Response:
        found = installed()
        headers = {
            **COMMON_HEADERS,
            "Content-Security-Policy": found.content_security_policy,
            "Cache-Control": "no-cache",
        }
        return Response(found.index_html, media_type="text/html", headers=headers)

    @routes.get("/viewer")
    def viewer() -> Response:
        """OHIF's basic viewer: ``/viewer?StudyInstanceUIDs=<uid>&token=<bearer token>``."""
        return index()

    @routes.get("/viewer/{rest:path}")
    def viewer_route(rest: str) -> Response:
        return index()

    @routes.get("/{path:path}")
    def asset(path: str) -> Response:
        if path == "index.html":
            return index()
        # Browsers ask every origin for /favicon.ico; OHIF keeps its icon under assets/.
        path = ALIASES.get(path, path)
        found = dist.file(path) if dist is not None else None
        if found is None:
            raise NotFound(f"no resource at /{path}")
        headers = {**COMMON_HEADERS, "Cache-Control": "public, max-age=3600"}
        return FileResponse(found, headers=headers)

    return routes
