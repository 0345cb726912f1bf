"""HTTP problems: the one place where errors become HTTP statuses (RFC 9457 bodies).

::

    ApiProblem
    ├── BadRequest (400)      malformed query or body
    ├── Unauthorized (401)    no or invalid token
    ├── Forbidden (403)       a role that may not
    ├── NotFound (404)        unknown UID
    ├── NotAcceptable (406)   no acceptable media type
    ├── Conflict (409)        the resource changed meanwhile, or is not in a state to allow it
    ├── PayloadTooLarge (413)
    ├── UnsupportedMediaType (415)
    └── ServiceUnavailable (503)   a dependency (e.g. the token issuer) cannot be reached

Archive errors (pacs.errors) are translated here too: a QueryError is a 400, an unavailable
store or index a 503, an InvalidFacility (a bad facility name, a share to an unknown
facility or until a past date) a 400. Bodies never carry internal text (SQL, paths, stack,
object reprs): an unexpected error is logged with a correlation id and answered with a fixed
reason and that id (also in the ``X-Correlation-ID`` header), so an operator can find the log line.
"""

from __future__ import annotations

import logging
import re
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from pacs.errors import IndexUnavailable, InvalidFacility, QueryError, StorageUnavailable

log = logging.getLogger(__name__)
CORRELATION_HEADER = "X-Correlation-ID"
_PATH_PARAMETER = re.compile(r"\{[^}/]+\}")


class ApiProblem(Exception):
    status = 500
    title = "Internal Server Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiProblem):
    status, title = 400, "Bad Request"


class Unauthorized(ApiProblem):
    status, title = 401, "Unauthorized"


class Forbidden(ApiProblem):
    status, title = 403, "Forbidden"


class NotFound(ApiProblem):
    status, title = 404, "Not Found"


class NotAcceptable(ApiProblem):
    status, title = 406, "Not Acceptable"


class Conflict(ApiProblem):
    status, title = 409, "Conflict"


class PayloadTooLarge(ApiProblem):
    status, title = 413, "Content Too Large"


class UnsupportedMediaType(ApiProblem):
    status, title = 415, "Unsupported Media Type"


class ServiceUnavailable(ApiProblem):
    status, title = 503, "Service Unavailable"


def _response(
    status: int,
    title: str,
    detail: str,
    fhir: bool = False,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if fhir:  # FHIR clients expect an OperationOutcome
        code = {401: "login", 403: "forbidden", 404: "not-found"}.get(status, "invalid")
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": f"{title}: {detail}"}],
        }
        return JSONResponse(
            outcome, status_code=status, headers=headers, media_type="application/fhir+json"
        )
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(
        body, status_code=status, headers=headers, media_type="application/problem+json"
    )


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


def _logged(request: Request, status: int, title: str, reason: str, exc: Exception) -> JSONResponse:
    """Log *exc* in full under a new correlation id; answer *reason* and the id only."""
    correlation = uuid.uuid4().hex[:16]
    log.error(
        "%s %s failed (correlation id %s): %s",
        request.method,
        request.url.path,
        correlation,
        exc,
        exc_info=status >= 500 and not isinstance(exc, StorageUnavailable | IndexUnavailable),
    )
    detail = f"{reason} (correlation id {correlation})"
    headers = {CORRELATION_HEADER: correlation}
    return _response(status, title, detail, _is_fhir(request), headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this path: RFC 9110 15.5.6 wants the
    whole list in Allow, not only the first matching route's. Read from the OpenAPI document
    (built once), which lists each path with all of its methods."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = "[^/]+".join(re.escape(part) for part in _PATH_PARAMETER.split(template))
        if re.fullmatch(pattern, request.url.path):
            methods.update(method.upper() for method in operations)
    return sorted(methods)


def install(app: FastAPI) -> None:
    """Register the translations on *app*."""

    async def problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return _response(exc.status, exc.title, exc.detail, _is_fhir(request))

    async def query(request: Request, exc: Exception) -> JSONResponse:
        return _response(400, "Bad Request", str(exc), _is_fhir(request))

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        what = "blob store" if isinstance(exc, StorageUnavailable) else "index database"
        reason = f"the archive's {what} is unavailable; try again later"
        return _logged(request, 503, "Service Unavailable", reason, exc)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _logged(request, 500, "Internal Server Error", "unexpected error", exc)

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        reasons = []
        for error in exc.errors()[:5]:  # the first few, without the schema or the input
            where = ".".join(str(part) for part in error.get("loc", ()))
            reasons.append(f"{where}: {error.get('msg', 'invalid')}")
        return _response(400, "Bad Request", "; ".join(reasons), _is_fhir(request))

    async def http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(_allowed_methods(request))
            detail = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        elif exc.status_code == 404:
            detail = f"no resource at {request.url.path}"
        else:
            detail = str(exc.detail)
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
        return _response(exc.status_code, title, detail, _is_fhir(request), headers)

    app.add_exception_handler(ApiProblem, problem)
    app.add_exception_handler(QueryError, query)
    app.add_exception_handler(InvalidFacility, query)
    app.add_exception_handler(StorageUnavailable, unavailable)
    app.add_exception_handler(IndexUnavailable, unavailable)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, unexpected)
