"""Facility isolation on every HTTP route over patient data, generated from the OpenAPI
document: a route without a row here fails the test, so a new route must say how it is scoped.

One archive holds studies of two facilities (``north``, ``south``); one north study is shared
with south. Each row is called as four principals:

- own: a north token on north study A -> visible (200, or the route's answer for a visible study)
- other: a south token on north study A -> 404, or an empty result for a search (never 403)
- shared: a south token on north study S, shared with south -> visible
- global: an admin token for every facility on study A -> visible

Searches (QIDO-RS paging, UID lists, wildcards, includefield, the worklist), metadata ETags,
revoking a grant and STOW-RS (the token's facility; never into another facility's study) have
tests of their own below; the DIMSE rows live in tests/pacs/test_dimse_facilities.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from pacs.facilities import Scope
from pacs.index import Database
from pacs.sharing import revoke_share, share_study, study_shares
from tests.dicom import derived, encode
from tests.viewer_api.facility_world import MARK, Stored, World, facility_world

DICOM_JSON = "application/dicom+json"
NOT_AUTHORIZED = 0x0124
FAILURE_REASON = "00081197"
FAILED_SOP_SEQUENCE = "00081198"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with facility_world(tmp_path_factory.mktemp("isolation") / "home") as built:
        yield built


# -- the route table ---------------------------------------------------------------------------

#: A study-level read: 200 for a visible study, 404 otherwise.
READ = "read"
#: A search inside a study: results for a visible one, no results (200 [] or 404) otherwise.
STUDY_SEARCH = "study-search"
#: A search over everything: only visible studies come back.
SEARCH = "search"
#: A review action: the visible study's review changes, another facility's is a 404 and stays.
REVIEW = "review"

INSTANCE = "/dicom-web/studies/{study}/series/{series}/instances/{instance}"
REVIEW_ROOT = "/api/v1/studies/{study}/review"


@dataclass(frozen=True)
class Row:
    kind: str
    query: str = ""
    accept: str | None = DICOM_JSON
    #: The status a visible study gets (REVIEW rows: the action's answer).
    visible: int = 200
    #: REVIEW rows: the JSON body for the review at this version.
    body: Callable[[int], dict[str, Any]] | None = None


ANY = "*/*"
ROWS: dict[tuple[str, str], Row] = {
    # QIDO-RS
    ("GET", "/dicom-web/studies"): Row(SEARCH),
    ("GET", "/dicom-web/series"): Row(SEARCH),
    ("GET", "/dicom-web/instances"): Row(SEARCH),
    ("GET", "/dicom-web/studies/{study}/series"): Row(STUDY_SEARCH),
    ("GET", "/dicom-web/studies/{study}/instances"): Row(STUDY_SEARCH),
    ("GET", "/dicom-web/studies/{study}/series/{series}/instances"): Row(STUDY_SEARCH),
    # WADO-RS
    ("GET", "/dicom-web/studies/{study}"): Row(READ, accept=ANY),
    ("GET", "/dicom-web/studies/{study}/series/{series}"): Row(READ, accept=ANY),
    ("GET", INSTANCE): Row(READ, accept=ANY),
    ("GET", "/dicom-web/studies/{study}/metadata"): Row(READ),
    ("GET", "/dicom-web/studies/{study}/series/{series}/metadata"): Row(READ),
    ("GET", INSTANCE + "/metadata"): Row(READ),
    ("GET", INSTANCE + "/bulkdata/{tag}"): Row(READ, accept=ANY),
    ("GET", INSTANCE + "/frames/{frames}"): Row(READ, accept=ANY),
    ("GET", INSTANCE + "/rendered"): Row(READ, accept="image/png"),
    ("GET", INSTANCE + "/frames/{frame}/rendered"): Row(READ, accept="image/png"),
    ("GET", INSTANCE + "/thumbnail"): Row(READ, accept="image/jpeg"),
    ("GET", "/dicom-web/studies/{study}/series/{series}/thumbnail"): Row(READ, accept=ANY),
    ("GET", "/dicom-web/studies/{study}/thumbnail"): Row(READ, accept=ANY),
    # WADO-URI (the UIDs in the query string)
    ("GET", "/wado"): Row(
        READ,
        query="requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={instance}"
        "&contentType=application/dicom",
        accept=ANY,
    ),
    # Results and the review
    ("GET", "/api/v1/studies/{study}/findings"): Row(READ, accept=None),
    ("GET", "/api/v1/worklist"): Row(SEARCH, query=f"PatientName={MARK}*", accept=None),
    ("GET", REVIEW_ROOT): Row(READ, accept=None),
    ("POST", REVIEW_ROOT + "/findings/{finding}/confirm"): Row(
        REVIEW, body=lambda v: {"version": v}
    ),
    ("POST", REVIEW_ROOT + "/findings/{finding}/reject"): Row(
        REVIEW, body=lambda v: {"version": v, "reason": "artefact"}
    ),
    ("POST", REVIEW_ROOT + "/findings/{finding}/correct"): Row(
        REVIEW, body=lambda v: {"version": v, "diameter_mm": 7.5}
    ),
    ("POST", REVIEW_ROOT + "/findings"): Row(
        REVIEW,
        body=lambda v: {"version": v, "centre": {"x": -50, "y": -50, "z": -99}, "diameter_mm": 5},
    ),
    ("POST", REVIEW_ROOT + "/impression"): Row(
        REVIEW, body=lambda v: {"version": v, "text": "no change"}
    ),
    ("POST", REVIEW_ROOT + "/lung-rads"): Row(
        REVIEW, body=lambda v: {"version": v, "category": None}
    ),
    # Sign: the second AI finding is never decided, so a visible study's answer is the 409
    # naming it (the study was found and its review read).
    ("POST", REVIEW_ROOT + "/sign"): Row(REVIEW, visible=409, body=lambda v: {"version": v}),
    # FHIR
    ("GET", "/fhir/ImagingStudy"): Row(SEARCH, query="_id={study}", accept=None),
    ("GET", "/fhir/ImagingStudy/{study}"): Row(READ, accept=None),
    ("GET", "/fhir/Patient"): Row(SEARCH, query="_id={patient}", accept=None),
    ("GET", "/fhir/Patient/{patient}"): Row(READ, accept=None),
    ("GET", "/fhir/DiagnosticReport"): Row(SEARCH, query="study={study}", accept=None),
    ("GET", "/fhir/DiagnosticReport/{report}"): Row(READ, accept=None),
    ("GET", "/fhir/Observation/{observation}"): Row(READ, accept=None),
    # The change feed
    ("GET", "/api/v1/changes"): Row(SEARCH, query="limit=1000", accept=None),
}
#: Routes that read or write no patient data (or whose isolation is tested below: STOW).
NOT_PATIENT_DATA = {
    ("GET", "/fhir/metadata"),  # the CapabilityStatement
    ("GET", "/fhir/Endpoint/{endpoint}"),  # the archive's WADO-RS endpoint
    ("GET", "/api/v1/webhooks"),  # admin configuration
    ("POST", "/api/v1/webhooks"),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"),
    ("POST", "/dicom-web/studies"),  # STOW-RS: test_stow_* below
    ("POST", "/dicom-web/studies/{study}"),
    # The audit trail: an admin of every facility only, 403 for any other (test_audit.py)
    ("GET", "/fhir/AuditEvent"),
    ("GET", "/fhir/AuditEvent/{event}"),
    # Sharing grants (admin only): 404 outside the admin's facilities, test_shares.py
    ("GET", "/api/v1/studies/{study}/shares"),
    ("POST", "/api/v1/studies/{study}/shares"),
    ("DELETE", "/api/v1/shares/{share_id}"),
    # De-identified export (admin only): another facility's study is a 404 or skipped, never
    # in the zip: test_exports.py test_another_facilitys_study_is_not_found
    ("POST", "/api/v1/exports"),
    # Operations: Prometheus metrics (admin or PACS_METRICS_TOKEN, test_metrics.py) and
    # readiness (no token, like /healthz; says only which dependency is down, test_health.py)
    ("GET", "/metrics"),
    ("GET", "/readyz"),
}


def _path(template: str, target: Stored) -> str:
    values = {
        "study": target.StudyInstanceUID,
        "series": target.SeriesInstanceUID,
        "instance": target.SOPInstanceUIDs[0],
        "tag": "7FE00010",
        "frames": "1",
        "frame": "1",
        "finding": target.findings[0] if target.findings else "1.2.3",
        "patient": target.patient_id,
        "report": f"ai-{target.run_id}",
        "observation": f"ai-{target.run_id}-1",
    }
    return template.format(**values)


def _get(world: World, token: str, template: str, row: Row, target: Stored) -> httpx.Response:
    url = world.server.url + _path(template, target)
    if row.query:
        url += "?" + _path(row.query, target)
    headers = {"Authorization": f"Bearer {world.tokens[token]}"}
    if row.accept is not None:
        headers["Accept"] = row.accept
    return httpx.get(url, headers=headers, timeout=30)


def _study_uids(body: Any) -> set[str]:
    """Every Study Instance UID a search response names (DICOM JSON, worklist, FHIR, changes)."""
    if isinstance(body, list):  # QIDO-RS
        return {str(m["0020000D"]["Value"][0]) for m in body if "0020000D" in m}
    if "items" in body:  # the worklist
        return {item["StudyInstanceUID"] for item in body["items"]}
    if "changes" in body:
        return {c["StudyInstanceUID"] for c in body["changes"] if c["StudyInstanceUID"]}
    found = set()  # a FHIR Bundle: ImagingStudy ids, or the studies reports and patients name
    for entry in body.get("entry", []):
        resource = entry["resource"]
        if resource["resourceType"] == "ImagingStudy":
            found.add(resource["id"])
        for reference in resource.get("imagingStudy", []):
            found.add(reference["reference"].removeprefix("ImagingStudy/"))
        if resource["resourceType"] == "Patient":
            found.add(f"Patient/{resource['id']}")
    return found


def _names(target: Stored) -> set[str]:
    return {target.StudyInstanceUID, f"Patient/{target.patient_id}"}


def _review(world: World, target: Stored) -> dict[str, Any]:
    """The review of *target* as the global admin reads it."""
    url = f"{world.server.url}/api/v1/studies/{target.StudyInstanceUID}/review"
    response = httpx.get(url, headers={"Authorization": f"Bearer {world.tokens['global']}"})
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def _act(world: World, token: str, template: str, row: Row, target: Stored) -> httpx.Response:
    assert row.body is not None
    version = _review(world, target)["version"]
    return httpx.post(
        world.server.url + _path(template, target),
        json=row.body(version),
        headers={"Authorization": f"Bearer {world.tokens[token]}"},
        timeout=30,
    )


# -- the matrix --------------------------------------------------------------------------------


def test_every_route_has_a_row(world: World) -> None:
    spec = httpx.get(f"{world.server.url}/openapi.json").json()
    routes = {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method in operations
        if path != "/healthz"
    }
    assert routes - set(ROWS) - NOT_PATIENT_DATA == set(), "a route without an isolation row"
    assert set(ROWS) - routes == set(), "a row for a route that no longer exists"
    assert set(ROWS) & NOT_PATIENT_DATA == set()


@pytest.mark.parametrize("key", [pytest.param(key, id=f"{key[0]} {key[1]}") for key in ROWS])
def test_isolation(world: World, key: tuple[str, str]) -> None:
    _, template = key
    row = ROWS[key]
    own, shared = world.own, world.shared
    cases = [("north", own, True), ("south", own, False), ("south", shared, True)]
    cases.append(("global", own, True))
    for token, target, visible in cases:
        where = (token, target.facility, target.StudyInstanceUID == shared.StudyInstanceUID)
        if row.kind == REVIEW:
            before = _review(world, target)
            response = _act(world, token, template, row, target)
            if visible:
                assert response.status_code == row.visible, (where, response.text)
            else:
                assert response.status_code == 404, (where, response.text)
                assert _review(world, target) == before  # nothing changed
            continue
        response = _get(world, token, template, row, target)
        if row.kind == READ:
            assert response.status_code == (row.visible if visible else 404), (where, response.text)
        elif row.kind == STUDY_SEARCH:
            if visible:
                assert response.status_code == 200 and response.json(), where
            else:
                assert response.status_code == 404 or response.json() == [], where
        else:
            assert response.status_code == 200, (where, response.text)
            names = _study_uids(response.json())
            assert bool(names & _names(target)) == visible, (where, names)


def test_searches_see_own_and_shared_studies(world: World) -> None:
    """Searches over everything: each facility sees its own and the shared study, the global
    admin all five; never another facility's."""
    north = {world.own, world.shared, world.north_more}
    south = {world.south, world.south_more, world.shared}
    expected = {"north": north, "south": south, "global": set(world.marked)}
    for token, visible in expected.items():
        uids = {s.StudyInstanceUID for s in visible}
        hidden = {s.StudyInstanceUID for s in world.marked} - uids
        for path in ("/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances"):
            found = _qido(world, token, path, PatientName=f"{MARK}*")
            assert _study_uids(found.json()) == uids, (token, path)
        for query in ({"PatientName": "*"}, {}):
            found = _study_uids(_qido(world, token, "/dicom-web/studies", **query).json())
            assert uids <= found and not found & hidden, (token, query)
        worklist = _api(world, token, "/api/v1/worklist", PatientName=f"{MARK}*")
        assert _study_uids(worklist.json()) == uids, token
        assert worklist.json()["total"] == len(uids)


def _qido(world: World, token: str, path: str, **query: str) -> httpx.Response:
    response = httpx.get(
        world.server.url + path,
        params=query,
        headers={"Authorization": f"Bearer {world.tokens[token]}", "Accept": DICOM_JSON},
    )
    assert response.status_code == 200, response.text
    return response


def _api(world: World, token: str, path: str, **query: str) -> httpx.Response:
    response = httpx.get(
        world.server.url + path,
        params=query,
        headers={"Authorization": f"Bearer {world.tokens[token]}"},
    )
    assert response.status_code == 200, response.text
    return response


def test_qido_paging_counts_only_visible_studies(world: World) -> None:
    """limit/offset page over the visible studies; the Warning counts only those."""
    for token in ("north", "south"):
        first = _qido(world, token, "/dicom-web/studies", PatientName=f"{MARK}*", limit="2")
        assert len(first.json()) == 2
        assert "There are 1 additional results" in first.headers["warning"], token
        rest = _qido(
            world, token, "/dicom-web/studies", PatientName=f"{MARK}*", limit="2", offset="2"
        )
        assert len(rest.json()) == 1 and "warning" not in rest.headers, token
        beyond = _qido(
            world, token, "/dicom-web/studies", PatientName=f"{MARK}*", limit="2", offset="3"
        )
        assert beyond.json() == []
        assert len(_study_uids(first.json()) | _study_uids(rest.json())) == 3
    every = _qido(world, "global", "/dicom-web/studies", PatientName=f"{MARK}*", limit="2")
    assert "There are 3 additional results" in every.headers["warning"]


def test_qido_uid_lists_and_matching_keys_stay_in_scope(world: World) -> None:
    own, south = world.own, world.south
    pair = f"{own.StudyInstanceUID}\\{south.StudyInstanceUID}"
    expected = {
        "north": {own.StudyInstanceUID},
        "south": {south.StudyInstanceUID},
        "global": {own.StudyInstanceUID, south.StudyInstanceUID},
    }
    for token, uids in expected.items():
        for path in ("/dicom-web/studies", "/dicom-web/series", "/dicom-web/instances"):
            found = _qido(world, token, path, StudyInstanceUID=pair)
            assert _study_uids(found.json()) == uids, (token, path)
        # The same PatientID in both facilities: two patients, each seen by its own facility.
        found = _qido(world, token, "/dicom-web/studies", PatientID="MRN-1")
        assert _study_uids(found.json()) == uids, token
        found = _qido(
            world,
            token,
            "/dicom-web/studies",
            StudyInstanceUID=pair,
            includefield="PatientBirthDate,00081030",
        )
        assert _study_uids(found.json()) == uids, token
        series = f"{own.SeriesInstanceUID}\\{south.SeriesInstanceUID}"
        found = _qido(world, token, "/dicom-web/series", SeriesInstanceUID=series)
        assert _study_uids(found.json()) == uids, token


def test_metadata_etag_never_answers_304_across_facilities(world: World) -> None:
    own = world.own
    for path in (
        f"/dicom-web/studies/{own.StudyInstanceUID}/metadata",
        f"/dicom-web/studies/{own.StudyInstanceUID}/series/{own.SeriesInstanceUID}/metadata",
    ):
        url = world.server.url + path

        def get(token: str, etag: str | None = None, url: str = url) -> httpx.Response:
            headers = {"Authorization": f"Bearer {world.tokens[token]}", "Accept": DICOM_JSON}
            if etag is not None:
                headers["If-None-Match"] = etag
            return httpx.get(url, headers=headers)

        first = get("north")
        assert first.status_code == 200
        etag = first.headers["etag"]
        assert get("north", etag).status_code == 304
        assert get("global", etag).status_code == 304
        refused = get("south", etag)
        assert refused.status_code == 404 and "etag" not in refused.headers, path
        assert get("south", f'W/{etag}, "other"').status_code == 404


def test_revoked_share_is_not_found_at_once(world: World) -> None:
    """Revoking ends the grant on the next request (WADO-RS, metadata, QIDO)."""
    target = _store_study_via_stow(world, "north-modality", "Revoked")
    db = Database(f"sqlite:///{world.server.home / 'index.db'}")
    try:
        with db.write() as conn:
            share = share_study(conn, Scope.everything(), target, "south", "test")
        study_url = f"/dicom-web/studies/{target}/metadata"
        assert _status(world, "south", study_url) == 200
        with db.write() as conn:
            revoke_share(conn, Scope.of(["north"]), share.id, "test")
            assert not study_shares(conn, Scope.everything(), target)[0].live(share.granted_at)
    finally:
        db.dispose()
    assert _status(world, "south", study_url) == 404
    assert _status(world, "north", study_url) == 200
    found = _qido(world, "south", "/dicom-web/studies", StudyInstanceUID=target)
    assert found.json() == []


def _status(world: World, token: str, path: str) -> int:
    headers = {"Authorization": f"Bearer {world.tokens[token]}", "Accept": DICOM_JSON}
    return httpx.get(world.server.url + path, headers=headers).status_code


def test_the_dimse_rows_of_the_matrix_name_their_tests() -> None:
    """The DIMSE rows (tests/pacs/test_dimse_facilities.py) say what each service gives for an
    own, another facility's and a shared study, and name tests that exist."""
    from tests.pacs import test_dimse_facilities as dimse

    assert set(dimse.ISOLATION_MATRIX) == {"C-STORE", "C-FIND", "C-MOVE", "C-GET"}
    for service, row in dimse.ISOLATION_MATRIX.items():
        assert {"own", "other", "shared", "tests"} <= set(row), service
        for name in row["tests"].split(","):
            assert callable(getattr(dimse, name.strip(), None)), (service, name)


# -- STOW-RS -----------------------------------------------------------------------------------


def _stow(
    world: World,
    token: str,
    parts: list[bytes],
    path: str = "/dicom-web/studies",
    query: list[tuple[str, str]] | None = None,
) -> httpx.Response:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    body += f"--{boundary}--\r\n".encode()
    headers = {
        "Authorization": f"Bearer {world.tokens[token]}",
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": DICOM_JSON,
    }
    return httpx.post(world.server.url + path, params=query or [], content=body, headers=headers)


def _store_study_via_stow(world: World, token: str, name: str, facility: str = "") -> str:
    ds = derived(
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
        PatientName=f"Stow^{name}",
        PatientID=f"STOW-{name}",  # a patient of its own: no rename of a stored one
    )
    response = _stow(world, token, [encode(ds)], query=[("facility", facility)] if facility else [])
    assert response.status_code == 200, response.text
    return str(ds.StudyInstanceUID)


def _visible_to(world: World, study_uid: str) -> set[str]:
    return {
        token
        for token in ("north", "south")
        if _status(world, token, f"/dicom-web/studies/{study_uid}/metadata") == 200
    }


def test_stow_stores_for_the_tokens_facility(world: World) -> None:
    assert _visible_to(world, _store_study_via_stow(world, "north-modality", "N")) == {"north"}
    assert _visible_to(world, _store_study_via_stow(world, "south-modality", "S")) == {"south"}
    chosen = _store_study_via_stow(world, "both-modality", "Both", facility="south")
    assert _visible_to(world, chosen) == {"south"}
    # A token without facilities stores for the default facility: neither north nor south.
    assert _visible_to(world, _store_study_via_stow(world, "default-modality", "D")) == set()
    # A global admin naming no facility: a new study is the default facility's, an instance
    # of a known study joins that study's facility.
    assert _visible_to(world, _store_study_via_stow(world, "global", "G")) == set()
    north = _store_study_via_stow(world, "north-modality", "N2")
    [stored] = _qido(world, "north", f"/dicom-web/studies/{north}/instances").json()
    more = derived(
        StudyInstanceUID=north,
        SeriesInstanceUID=stored["0020000E"]["Value"][0],
        PatientName="Stow^N2",
        PatientID="STOW-N2",
    )
    assert _stow(world, "global", [encode(more)]).status_code == 200
    assert len(_qido(world, "north", f"/dicom-web/studies/{north}/instances").json()) == 2
    again = derived(StudyInstanceUID=north, SeriesInstanceUID=more.SeriesInstanceUID)
    named = _stow(world, "global", [encode(again)], query=[("facility", "south")])
    assert named.status_code == 409  # a facility named: the study is not south's


@pytest.mark.parametrize(
    ("token", "query", "reason"),
    [
        ("both-modality", [], "several facilities"),
        ("north-modality", [("facility", "south")], "does not speak for facility 'south'"),
        ("both-modality", [("facility", "bad,name")], "is not a facility name"),
        ("both-modality", [("facility", "north"), ("facility", "south")], "not several"),
    ],
)
def test_stow_refuses_a_facility_the_token_does_not_name(
    world: World, token: str, query: list[tuple[str, str]], reason: str
) -> None:
    ds = derived(
        StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid(), PatientName="Stow^No"
    )
    response = _stow(world, token, [encode(ds)], query=query)
    assert response.status_code == 400 and reason in response.json()["detail"]
    found = _qido(world, "global", "/dicom-web/studies", StudyInstanceUID=ds.StudyInstanceUID)
    assert found.json() == []


def test_stow_into_another_facilitys_study_stores_nothing(world: World) -> None:
    """An instance of a north study sent with a south token is refused (0x0124, 409), new
    or the very bytes already stored; the study keeps its instances. The refusal tells the
    sender that the study exists elsewhere (the UIDs are its own data), nothing more."""
    own = world.own
    before = _qido(world, "global", f"/dicom-web/studies/{own.StudyInstanceUID}/instances")
    new = derived(
        StudyInstanceUID=own.StudyInstanceUID,
        SeriesInstanceUID=own.SeriesInstanceUID,
        PatientID=own.PatientID,
        PatientName=f"{MARK}^Alice",
    )
    paths = ["/dicom-web/studies", f"/dicom-web/studies/{own.StudyInstanceUID}"]
    for path in paths:
        response = _stow(world, "south-modality", [encode(new)], path=path)
        assert response.status_code == 409, response.text
        [failed] = response.json()[FAILED_SOP_SEQUENCE]["Value"]
        assert failed[FAILURE_REASON]["Value"] == [NOT_AUTHORIZED]
        assert "belongs to another facility than south" in response.headers["warning"]
        assert "north" not in response.headers["warning"]
    # A north token for both facilities naming south is refused the same way, and so is south
    # adding to the study north shared with it (a grant shows a study, it gives no ownership).
    refused = _stow(world, "both-modality", [encode(new)], query=[("facility", "south")])
    assert refused.status_code == 409
    into_shared = derived(
        StudyInstanceUID=world.shared.StudyInstanceUID,
        SeriesInstanceUID=world.shared.SeriesInstanceUID,
        PatientID=world.shared.PatientID,
    )
    assert _stow(world, "south-modality", [encode(into_shared)]).status_code == 409
    after = _qido(world, "global", f"/dicom-web/studies/{own.StudyInstanceUID}/instances")
    assert after.json() == before.json()
    assert _status(world, "south", f"/dicom-web/studies/{own.StudyInstanceUID}/metadata") == 404
