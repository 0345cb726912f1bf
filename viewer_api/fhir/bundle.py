"""searchset Bundles (R4 3.1.1.5.7, 2.36.2): ``total``, paging links, match and include entries."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse

from viewer_api.dicomjson import public_root
from viewer_api.fhir.params import Paging

FHIR_JSON = "application/fhir+json"


def fhir_response(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON)


def fhir_base(request: Request) -> str:
    """The FHIR root as clients should address it (PACS_PUBLIC_URL, never the Host header)."""
    return public_root(request) + "/fhir"


def searchset(
    request: Request,
    resource_type: str,
    total: int,
    matches: list[dict[str, Any]],
    included: list[dict[str, Any]],
    paging: Paging,
) -> JSONResponse:
    """One page of a search: *matches* (``search.mode = match``) and the resources they include
    (``include``, each once). Links carry the effective ``_count`` (after clamping); ``next``
    only when more matches exist and the page size is not 0 (a ``_count=0`` or
    ``_summary=count`` request gets the total only, R4 3.1.1.5.7)."""
    base = fhir_base(request)
    kept = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in {"_count", "_offset", "_summary"}
    ]
    count, offset = paging.count, paging.offset

    def page(at: int) -> str:
        query = urlencode([*kept, ("_count", str(count)), ("_offset", str(at))])
        return f"{base}/{resource_type}?{query}"

    links = [{"relation": "self", "url": page(offset)}]
    if count > 0 and offset + count < total:
        links.append({"relation": "next", "url": page(offset + count)})
    if count > 0 and offset > 0:
        links.append({"relation": "previous", "url": page(max(0, offset - count))})
    entries = [
        {
            "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
            "resource": r,
            "search": {"mode": "match"},
        }
        for r in matches
    ]
    seen = {(r["resourceType"], r["id"]) for r in matches}
    for r in included:
        if (r["resourceType"], r["id"]) not in seen:
            seen.add((r["resourceType"], r["id"]))
            entries.append(
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "include"},
                }
            )
    body: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": total}
    body["link"] = links
    if entries:  # FHIR JSON forbids empty arrays (R4 2.6.2)
        body["entry"] = entries
    return fhir_response(body)
