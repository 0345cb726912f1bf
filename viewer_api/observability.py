"""What an operator watches: ``/metrics`` (Prometheus), ``/readyz`` (index and storage
reachable, schema current), and the middleware that gives each request an id (in every log
line, and the ``X-Request-ID`` header) and counts it by route template and status.

``/healthz`` (in ``viewer_api.main``) only says the process answers; ``/readyz`` says whether
it can do its work, with the reason when not (503).
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pacs.errors import ArchiveError, SchemaOutdated
from pacs.index import check_at_head
from pacs.ingest import Archive
from pacs.logs import new_id, request_id
from pacs.metrics import exposition, metrics
from viewer_api.auth import Principal, Role, authenticated
from viewer_api.problems import Forbidden

log = logging.getLogger(__name__)

#: Seconds each readiness check may take before it counts as failed.
READY_TIMEOUT = 3.0
# A request id a client (or proxy) sent that we keep: short, and safe in a log line.
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_checks = ThreadPoolExecutor(4, thread_name_prefix="readyz")

router = APIRouter(tags=["health"])


class RequestObservation:
    """ASGI middleware: a request id for the request's log lines and its answer, and the
    ``pacs_http_*`` metrics by route template (``/dicom-web/studies/{study}``, never the raw
    path: one series per route, not per study)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = sent if _CLIENT_ID.match(sent) else new_id()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            found = metrics()
            found.http_requests.labels(method, route, str(status)).inc()
            found.http_seconds.labels(method, route).observe(time.perf_counter() - started)
            request_id.reset(token)


def metrics_reader(request: Request) -> Principal | None:
    """An admin token, or the static ``PACS_METRICS_TOKEN`` (None then: no one's identity)."""
    expected: bytes | None = request.app.state.metrics_token
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode()
    if expected is not None and scheme.lower() == "bearer" and hmac.compare_digest(given, expected):
        return None
    principal = authenticated(request)
    if Role.ADMIN not in principal.roles:
        raise Forbidden("/metrics needs an admin token or PACS_METRICS_TOKEN")
    return principal


@router.get("/metrics", response_class=Response)
def read_metrics(
    request: Request, _reader: Annotated[Principal | None, Depends(metrics_reader)]
) -> Response:
    """Prometheus text exposition: every process of this node (``pacs.metrics``) and the
    queue gauges read from the index."""
    archive: Archive = request.app.state.archive
    body, content_type = exposition(archive.db)
    return Response(body, media_type=content_type)


@router.get("/readyz")
def readyz(request: Request) -> JSONResponse:
    """200 when the index answers, its schema is current and the storage can be written;
    503 with the reasons otherwise (details in the log, not in the answer)."""
    archive: Archive = request.app.state.archive
    checks: dict[str, Callable[[], None]] = {
        "index": lambda: _index_ready(archive),
        "storage": archive.blobs.check,
    }
    failures = {name: reason for name, check in checks.items() if (reason := _run(name, check))}
    if failures:
        return JSONResponse({"status": "unavailable", "failures": failures}, status_code=503)
    return JSONResponse({"status": "ready"})


def _index_ready(archive: Archive) -> None:
    with archive.db.read() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"SET LOCAL statement_timeout = {int(READY_TIMEOUT * 1000)}"))
        conn.execute(text("SELECT 1"))
    check_at_head(archive.db)


def _run(name: str, check: Callable[[], None]) -> str | None:
    """None when *check* passed within READY_TIMEOUT, else the public reason."""
    try:
        _checks.submit(check).result(timeout=READY_TIMEOUT)
    except FutureTimeout:
        log.warning("readyz: %s did not answer within %.0f s", name, READY_TIMEOUT)
        return f"{name} did not answer within {READY_TIMEOUT:.0f} s"
    except SchemaOutdated as exc:
        return str(exc)
    except ArchiveError as exc:
        log.warning("readyz: %s unreachable: %s", name, exc)
        return f"{name} unreachable"
    except Exception as exc:
        log.warning("readyz: %s check failed: %s", name, exc)
        return f"{name} check failed"
    return None


def install(app: FastAPI, metrics_token: str | None) -> None:
    """The request middleware (outermost: it times everything) and the two routes."""
    app.state.metrics_token = None if metrics_token is None else metrics_token.encode()
    app.include_router(router)
    app.add_middleware(RequestObservation)
