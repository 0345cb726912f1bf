"""HTTP problems: the one place where errors become HTTP statuses (RFC 9457 bodies).

::

    ApiProblem
    ├── BadRequest (400)      malformed query or body
    ├── Unauthorized (401)    no or invalid token
    ├── Forbidden (403)       a role that may not
    ├── NotFound (404)        unknown UID
    ├── NotAcceptable (406)   no acceptable media type
    ├── PayloadTooLarge (413)
    └── UnsupportedMediaType (415)

Archive errors (pacs.errors) are translated here too: a QueryError is a 400, an unavailable
store or index a 503.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pacs.errors import IndexUnavailable, QueryError, StorageUnavailable


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


class PayloadTooLarge(ApiProblem):
    status, title = 413, "Content Too Large"


class UnsupportedMediaType(ApiProblem):
    status, title = 415, "Unsupported Media Type"


def _response(status: int, title: str, detail: str, fhir: bool = False) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
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


def install(app: FastAPI) -> None:
    """Register the translations on *app*."""

    async def problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiProblem)
        return _response(exc.status, exc.title, exc.detail, _is_fhir(request))

    async def query(request: Request, exc: Exception) -> JSONResponse:
        return _response(400, "Bad Request", str(exc), _is_fhir(request))

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return _response(503, "Service Unavailable", str(exc), _is_fhir(request))

    app.add_exception_handler(ApiProblem, problem)
    app.add_exception_handler(QueryError, query)
    app.add_exception_handler(StorageUnavailable, unavailable)
    app.add_exception_handler(IndexUnavailable, unavailable)
