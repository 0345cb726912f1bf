"""Bounded request bodies.

Every request body but STOW-RS's (which has its own limit, ``PACS_MAX_STOW_BYTES``) is capped
at ``PACS_MAX_JSON_BYTES``. The cap is enforced while the body streams in, on the first read:
a route authenticates before it reads (see ``viewer_api.changes``), so an unauthenticated
client is answered 401 without its body being read at all, and a body declared (Content-Length)
or found larger than the cap is answered 413 without reading the rest.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from fastapi import FastAPI
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STOW_PREFIX = "/dicom-web/studies"


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a body passes the cap; the middleware answers 413."""


def is_stow(scope: Scope) -> bool:
    """STOW-RS requests (``POST /dicom-web/studies[/{study}]``) have their own limit."""
    return bool(scope["method"] == "POST" and str(scope["path"]).startswith(STOW_PREFIX))


class BodyLimit:
    """ASGI middleware: at most *max_bytes* of body per request, counted as it streams."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, exempt: Callable[[Scope], bool] = is_stow
    ) -> None:
        self.app, self.max_bytes, self.exempt = app, max_bytes, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        received = 0
        refused: str | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            if declared is not None and declared > self.max_bytes:
                refused = f"the body has {declared} bytes; at most {self.max_bytes} are accepted"
                raise BodyTooLarge(refused)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = f"the body is larger than {self.max_bytes} bytes"
                    raise BodyTooLarge(refused)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused is not None and not started:
                return  # whatever the app made of the refusal: our 413 goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if refused is None or started:
                raise
        if refused is not None and not started:
            await _too_large(refused)(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(reason: str) -> Response:
    body = {"type": "about:blank", "title": "Content Too Large", "status": 413, "detail": reason}
    # The rest of the body is not read: the connection cannot be reused.
    return Response(
        json.dumps(body),
        status_code=413,
        media_type="application/problem+json",
        headers={"Connection": "close"},
    )


def install(app: FastAPI, max_bytes: int) -> None:
    """Cap the request bodies of *app*."""
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
