"""``/fhir/metadata``: the CapabilityStatement, drawn from the search table (search.SEARCHES)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from viewer_api.auth import ResultReader
from viewer_api.fhir.bundle import fhir_base, fhir_response
from viewer_api.fhir.search import SEARCHES

router = APIRouter(tags=["FHIR R4"])  # mounted under /fhir by routes.router
#: Types that are read only (no search-type interaction).
READ_ONLY = ("Observation", "Endpoint")


@router.get("/metadata")
def capability_statement(request: Request, _: ResultReader) -> JSONResponse:
    """CapabilityStatement: what this server reads and searches."""
    return fhir_response(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2026-11-27",
            "kind": "instance",
            "software": {"name": "PACS-AI", "version": "0.1.0"},
            "implementation": {"description": "PACS-AI FHIR facade", "url": fhir_base(request)},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "service": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                        "code": "OAuth",
                                    }
                                ]
                            }
                        ],
                        "description": "Bearer JWT; roles emr, radiologist or admin read.",
                    },
                    "resource": [
                        *(_searchable(kind) for kind in SEARCHES),
                        *({"type": kind, "interaction": [{"code": "read"}]} for kind in READ_ONLY),
                    ],
                }
            ],
        }
    )


def _searchable(kind: str) -> dict[str, Any]:
    search = SEARCHES[kind]
    resource: dict[str, Any] = {
        "type": kind,
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [
            {"name": p.name, "type": p.type, "documentation": p.documentation}
            for p in search.parameters
        ],
    }
    if search.includes:
        resource["searchInclude"] = list(search.includes)
    if search.revincludes:
        resource["searchRevInclude"] = list(search.revincludes)
    return resource
