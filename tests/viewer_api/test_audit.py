"""The audit trail of a running archive: DIMSE and HTTP requests recorded with who, what and
from where; a failed login; a failure to audit fails the request; FHIR AuditEvent for admins;
``pacs audit verify`` and ``export``."""

from __future__ import annotations

import json
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pydicom
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import CTImageStorage

from pacs.audit import AuditAction
from pacs.dimse import status
from pacs.dimse.find import STUDY_ROOT_FIND, STUDY_ROOT_GET
from tests.dicom import LIDC_0001, dicom_files, store_statuses
from tests.servers import PacsServer
from viewer_api.audit import action_of

CT = dicom_files(LIDC_0001)[0]
HEADER = pydicom.dcmread(CT, stop_before_pixels=True)
STUDY = str(HEADER.StudyInstanceUID)
FRAME_WINDOW = 2
STORE_WINDOW = 2
FAIL_AUDIT = (
    "CREATE TRIGGER no_audit BEFORE INSERT ON audit_event BEGIN SELECT RAISE(ABORT, 'x'); END"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PacsServer]:
    home = tmp_path_factory.mktemp("audit") / "home"
    # Frame reads and stores: one event covers a reader's frames or a sender's stores of a
    # series for 2 s, then a summary.
    pacs = PacsServer(
        home,
        {
            "PACS_AUDIT_FRAME_WINDOW": str(FRAME_WINDOW),
            "PACS_AUDIT_STORE_WINDOW": str(STORE_WINDOW),
        },
    ).start()
    assert store_statuses(pacs.port, [CT], calling_aet="CT_SCANNER") == {CT.name: status.SUCCESS}
    yield pacs
    pacs.stop()


@pytest.fixture(scope="module")
def admin(server: PacsServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token('admin', facilities=('*',))}"}


def index(server: PacsServer, statement: str) -> None:
    with sqlite3.connect(server.home / "index.db", timeout=30) as conn:
        conn.execute(statement)


def study_query() -> Dataset:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = STUDY
    query.PatientID = ""
    return query


def c_find(server: PacsServer) -> list[int]:
    ae = AE(ae_title="FIND_SCU")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    assert assoc.is_established
    try:
        return [int(s.Status) for s, _ in assoc.send_c_find(study_query(), STUDY_ROOT_FIND)]
    finally:
        assoc.release()


def c_get(server: PacsServer) -> int:
    ae = AE(ae_title="GET_SCU")
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    handlers = [(evt.EVT_C_STORE, lambda event: 0x0000)]
    roles = [build_role(CTImageStorage, scp_role=True)]
    assoc = ae.associate(
        "127.0.0.1", server.port, ae_title="PACS", ext_neg=roles, evt_handlers=handlers
    )
    assert assoc.is_established
    try:
        replies = list(assoc.send_c_get(study_query(), STUDY_ROOT_GET))
        return int(replies[-1][0].Status)
    finally:
        assoc.release()


def events(server: PacsServer, headers: dict[str, str], **search: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{server.url}/fhir/AuditEvent", params=search, headers=headers)
    assert response.status_code == 200, response.text
    bundle = response.json()
    Bundle.model_validate(bundle)
    return [entry["resource"] for entry in bundle.get("entry", [])]


def requestor(resource: dict[str, Any]) -> dict[str, Any]:
    [agent] = [a for a in resource["agent"] if a["requestor"]]
    return agent


def subtype(resource: dict[str, Any]) -> str:
    return str(resource["subtype"][-1]["code"])


def test_dimse_requests_are_audited_with_the_peer(
    server: PacsServer, admin: dict[str, str]
) -> None:
    assert c_find(server) == [status.PENDING, status.SUCCESS]
    assert c_get(server) == status.SUCCESS

    [stored] = events(server, admin, agent="CT_SCANNER")
    assert subtype(stored) == "store" and stored["outcome"] == "0"
    assert requestor(stored)["network"]["address"] == "127.0.0.1"
    patient, study = stored["entity"][:2]
    assert patient["what"]["identifier"]["value"] == HEADER.PatientID
    assert study["what"]["identifier"]["value"] == f"urn:oid:{STUDY}"
    assert {d["valueString"] for d in study["detail"]} == {
        str(HEADER.SeriesInstanceUID),
        str(HEADER.SOPInstanceUID),
    }

    [query] = events(server, admin, agent="FIND_SCU")
    assert (subtype(query), query["type"]["code"], query["action"]) == ("query", "110112", "E")
    detail = json.loads(query["entity"][-1]["detail"][0]["valueString"])
    assert detail["matches"] == 1 and detail["studies"] == [STUDY]
    assert detail["service"] == "C_FIND" and detail["keys"]["StudyInstanceUID"] == STUDY
    assert query["entity"][0]["what"]["identifier"]["value"] == HEADER.PatientID

    [retrieve] = events(server, admin, agent="GET_SCU")
    assert subtype(retrieve) == "retrieve" and retrieve["type"]["code"] == "110104"
    assert json.loads(retrieve["entity"][-1]["detail"][0]["valueString"])["instances"] == 1


def test_a_refused_query_is_audited_as_a_failure(server: PacsServer, admin: dict[str, str]) -> None:
    bad = Dataset()
    bad.QueryRetrieveLevel = "FRAME"  # no such level (PS3.4 C.6.2.1)
    ae = AE(ae_title="BAD_SCU")
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACS")
    try:
        [(reply, _)] = list(assoc.send_c_find(bad, STUDY_ROOT_FIND))
    finally:
        assoc.release()
    assert reply.Status == status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
    [refused] = events(server, admin, agent="BAD_SCU")
    assert (subtype(refused), refused["outcome"]) == ("query", "4")
    assert refused["outcomeDesc"] == "Query/Retrieve Level missing or unknown"
    detail = json.loads(refused["entity"][-1]["detail"][0]["valueString"])
    assert detail["keys"] == {"QueryRetrieveLevel": "FRAME"}
    assert requestor(refused)["network"]["address"] == "127.0.0.1"


def test_http_requests_are_audited_with_the_token(
    server: PacsServer, admin: dict[str, str]
) -> None:
    token = server.token("radiologist", facilities=("default",))
    reader = {"Authorization": f"Bearer {token}"}
    qido = httpx.get(f"{server.url}/dicom-web/studies?PatientID={HEADER.PatientID}", headers=reader)
    assert qido.status_code == 200
    metadata = httpx.get(f"{server.url}/dicom-web/studies/{STUDY}/metadata", headers=reader)
    assert metadata.status_code == 200
    assert httpx.get(f"{server.url}/fhir/AuditEvent", headers=reader).status_code == 403

    subject, jti = _claims(token)["sub"], _claims(token)["jti"]
    # Tokens made by `pacs token create` share a subject: this token's events by its jti.
    policy = [f"urn:pacs-ai:token:{jti}"]
    found = [
        e
        for e in events(server, admin, agent=subject, _count="100")
        if requestor(e).get("policy") == policy
    ]
    assert [(subtype(e), e["outcome"]) for e in found] == [
        ("query", "0"),
        ("retrieve", "0"),
        ("audit_read", "4"),  # refused: not an admin
    ]
    query, retrieve, refused = found
    who = requestor(query)
    assert who["who"]["identifier"]["value"] == subject
    assert who["network"]["address"] == "127.0.0.1"
    assert [r["text"] for r in who["role"]] == ["radiologist"]
    assert query["source"]["site"] == "default"
    query_detail = json.loads(query["entity"][-1]["detail"][0]["valueString"])
    assert query_detail["query"] == f"PatientID={HEADER.PatientID}"
    assert retrieve["entity"][0]["what"]["identifier"]["value"] == HEADER.PatientID
    assert retrieve["entity"][1]["what"]["identifier"]["value"] == f"urn:oid:{STUDY}"
    assert refused["outcomeDesc"] == "HTTP 403"
    for resource in found:
        AuditEvent.model_validate(resource)


def test_concurrent_reads_are_each_audited_in_one_chain(
    server: PacsServer, admin: dict[str, str]
) -> None:
    """Every query and metadata read its own event; the frame reads of one reader of one
    series: an event before the first frame goes out, the rest counted in a summary event
    when the window closes (pacs.audit.covering): 16 requests accounted for either way."""
    token = server.token("radiologist")
    reader = {"Authorization": f"Bearer {token}"}
    series = f"{server.url}/dicom-web/studies/{STUDY}/series/{HEADER.SeriesInstanceUID}"
    urls = [
        f"{server.url}/dicom-web/studies?PatientID={HEADER.PatientID}",
        series + "/metadata",
        f"{series}/instances/{HEADER.SOPInstanceUID}/frames/1",
    ] * 16
    with httpx.Client(headers=reader, timeout=60) as client, ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(lambda url: client.get(url).status_code, urls))
    assert statuses == [200] * len(urls)

    policy = [f"urn:pacs-ai:token:{_claims(token)['jti']}"]

    def found() -> list[dict[str, Any]]:
        return [
            e
            for e in events(server, admin, agent=_claims(token)["sub"], _count="1000")
            if requestor(e).get("policy") == policy
        ]

    assert 1 <= len(_frame_events(found())) <= 16
    time.sleep(FRAME_WINDOW + 2)  # the windows close; the flusher looks every second
    everything = found()
    frames = _frame_events(everything)
    summaries = [d for d in frames if "requests" in d]
    covering = [d for d in frames if "requests" not in d]
    assert summaries  # 16 reads at once: some were covered
    assert len(covering) + sum(d["requests"] for d in summaries) == 16
    assert all(d["sop_instance_uids"] == [HEADER.SOPInstanceUID] for d in summaries)
    assert sorted(subtype(e) for e in everything) == ["query"] * 16 + ["retrieve"] * (
        16 + len(frames)
    )
    assert server.pacs("audit", "verify").stdout.startswith("intact: ")


def _frame_events(found: list[dict[str, Any]], route: str = "/frames/{frames}") -> list[Any]:
    """The details of the frame reads' events among *found*."""
    details = [json.loads(e["entity"][-1]["detail"][0]["valueString"]) for e in found]
    return [d for d in details if str(d.get("route", "")).endswith(route)]


def test_rendered_frames_are_covered_and_failed_frame_reads_never(
    server: PacsServer, admin: dict[str, str]
) -> None:
    token = server.token("radiologist")
    reader = {"Authorization": f"Bearer {token}"}
    series = f"{server.url}/dicom-web/studies/{STUDY}/series/{HEADER.SeriesInstanceUID}"
    rendered = f"{series}/instances/{HEADER.SOPInstanceUID}/frames/1/rendered"
    missing = f"{series}/instances/{HEADER.SOPInstanceUID}/frames/2"  # a one-frame CT
    with httpx.Client(headers=reader, timeout=60) as client:
        assert [client.get(rendered).status_code for _ in range(3)] == [200] * 3
        assert [client.get(missing).status_code for _ in range(3)] == [404] * 3
    time.sleep(FRAME_WINDOW + 2)
    policy = [f"urn:pacs-ai:token:{_claims(token)['jti']}"]
    found = [
        e
        for e in events(server, admin, agent=_claims(token)["sub"], _count="1000")
        if requestor(e).get("policy") == policy
    ]
    shown = _frame_events(found, "/frames/{frame}/rendered")
    assert [d.get("requests") for d in shown] == [None, 2]
    failed = [e for e in found if e["outcome"] != "0"]
    assert [e["outcomeDesc"] for e in failed] == ["HTTP 404"] * 3


def test_a_frame_read_without_an_open_window_waits_for_its_event(
    server: PacsServer, admin: dict[str, str]
) -> None:
    """The first frame read of a series by a reader is refused when its event cannot be
    written: nothing of a series goes out before the trail says who read it."""
    reader = {"Authorization": f"Bearer {server.token('radiologist')}"}
    frame = (
        f"{server.url}/dicom-web/studies/{STUDY}/series/{HEADER.SeriesInstanceUID}"
        f"/instances/{HEADER.SOPInstanceUID}/frames/1"
    )
    index(server, FAIL_AUDIT)
    try:
        response = httpx.get(frame, headers=reader)
        assert response.status_code == 503
        assert "audit" in response.json()["detail"]
    finally:
        index(server, "DROP TRIGGER no_audit")
    assert httpx.get(frame, headers=reader).status_code == 200


def test_a_senders_stores_of_a_series_are_covered_by_one_event_and_a_summary(
    server: PacsServer, admin: dict[str, str]
) -> None:
    """Three new instances of a series over one association: the first is audited as it is
    stored, the other two in one summary once the window has closed (pacs.audit.covering)."""
    files = dicom_files(LIDC_0001)[1:4]
    statuses = store_statuses(server.port, files, calling_aet="SERIES_SCU")
    assert statuses == {f.name: status.SUCCESS for f in files}
    [first] = events(server, admin, agent="SERIES_SCU")
    assert subtype(first) == "store" and requestor(first)["network"]["address"] == "127.0.0.1"
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    study = first["entity"][1]
    assert {d["valueString"] for d in study["detail"]} & set(uids)  # the first one stored
    deadline = time.monotonic() + STORE_WINDOW + 10
    while len(found := events(server, admin, agent="SERIES_SCU")) < 2:
        assert time.monotonic() < deadline, "no summary after the window closed"
        time.sleep(0.5)
    [summary] = [json.loads(e["entity"][-1]["detail"][0]["valueString"]) for e in found[1:]]
    assert summary["requests"] == summary["instances"] == 2
    assert sorted(summary["sop_instance_uids"] + [u for u in uids if u in str(first)]) == sorted(
        uids
    )
    assert server.pacs("audit", "verify").stdout.startswith("intact: ")


def test_a_failed_login_is_audited_with_its_address(
    server: PacsServer, admin: dict[str, str]
) -> None:
    bad = {"Authorization": "Bearer not-a-jwt"}
    assert httpx.get(f"{server.url}/dicom-web/studies", headers=bad).status_code == 401
    failures = [e for e in events(server, admin, _count="100") if subtype(e) == "login_failure"]
    [failure] = failures
    assert (failure["type"]["code"], failure["subtype"][0]["code"]) == ("110114", "110122")
    assert failure["outcome"] == "4"
    assert requestor(failure)["network"]["address"] == "127.0.0.1"
    assert "who" not in requestor(failure)


def test_search_by_patient_and_date(server: PacsServer, admin: dict[str, str]) -> None:
    patients = httpx.get(
        f"{server.url}/fhir/Patient", params={"identifier": HEADER.PatientID}, headers=admin
    ).json()
    patient_id = patients["entry"][0]["resource"]["id"]
    of_patient = events(server, admin, patient=f"Patient/{patient_id}", _count="100")
    assert {"store", "query", "retrieve"} <= {subtype(e) for e in of_patient}
    assert all(
        e["entity"][0]["what"]["identifier"]["value"] == HEADER.PatientID for e in of_patient
    )
    assert events(server, admin, date="lt2000-01-01") == []
    first = events(server, admin, _count="1")[0]
    assert httpx.get(f"{server.url}/fhir/AuditEvent/{first['id']}", headers=admin).json() == first


def test_a_failure_to_audit_fails_the_request(server: PacsServer, admin: dict[str, str]) -> None:
    reader = {"Authorization": f"Bearer {server.token('radiologist')}"}
    index(server, FAIL_AUDIT)
    try:
        response = httpx.get(f"{server.url}/dicom-web/studies/{STUDY}/metadata", headers=reader)
        assert response.status_code == 503
        assert "audit" in response.json()["detail"]
        # A search records its event from its route's thread (audited_response): same answer.
        qido = f"{server.url}/dicom-web/studies?PatientID={HEADER.PatientID}"
        response = httpx.get(qido, headers=reader)
        assert response.status_code == 503
        assert "audit" in response.json()["detail"]
        assert HEADER.PatientID not in response.text
        assert c_find(server) == [status.OUT_OF_RESOURCES]
    finally:
        index(server, "DROP TRIGGER no_audit")


def test_verify_and_export(server: PacsServer) -> None:
    verified = server.pacs("audit", "verify")
    assert verified.stdout.startswith("intact: ")
    exported = server.pacs("audit", "export", "--since", "2000-01-01").stdout.splitlines()
    messages = [ET.fromstring(line) for line in exported]  # noqa: S314 - our own output
    assert {m.tag for m in messages} == {"AuditMessage"}
    codes = {m.find("EventIdentification/EventID").attrib["csd-code"] for m in messages}  # type: ignore[union-attr]
    assert {"110104", "110112", "110114"} <= codes
    fhir = server.pacs("audit", "export", "--since", "2000-01-01", "--format", "fhir").stdout
    for line in fhir.splitlines():
        AuditEvent.model_validate(json.loads(line))

    index(server, "UPDATE audit_event SET remote_address = '203.0.113.5' WHERE id = 2")
    tampered = server.pacs("audit", "verify", check=False)
    assert tampered.returncode == 1
    assert "(id 2): hash does not match" in tampered.stderr


@pytest.mark.parametrize(
    ("method", "route", "status", "action"),
    [
        ("GET", "/dicom-web/studies", 200, AuditAction.QUERY),
        ("GET", "/dicom-web/studies/{study}/series", 200, AuditAction.QUERY),
        ("GET", "/dicom-web/studies/{study}/metadata", 200, AuditAction.RETRIEVE),
        (
            "GET",
            "/dicom-web/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            200,
            AuditAction.RETRIEVE,
        ),
        ("POST", "/dicom-web/studies", 200, None),  # each stored instance is audited by ingest
        ("POST", "/dicom-web/studies", 415, AuditAction.STORE),
        ("GET", "/fhir/Patient", 200, AuditAction.QUERY),
        ("GET", "/fhir/Patient/{patient}", 200, AuditAction.RETRIEVE),
        ("GET", "/fhir/AuditEvent", 200, AuditAction.AUDIT_READ),
        ("POST", "/api/v1/studies/{study}/review/sign", 200, AuditAction.SIGN),
        ("POST", "/api/v1/studies/{study}/review/impression", 200, AuditAction.REVIEW),
        ("POST", "/api/v1/studies/{study}/shares", 201, AuditAction.SHARE),
        ("DELETE", "/api/v1/shares/{share_id}", 200, AuditAction.SHARE),
        ("GET", "/api/v1/worklist", 200, AuditAction.QUERY),
        ("GET", "/wado", 200, AuditAction.RETRIEVE),
        ("GET", "/dicom-web/studies", 401, AuditAction.LOGIN_FAILURE),
    ],
)
def test_http_actions_by_route(
    method: str, route: str, status: int, action: AuditAction | None
) -> None:
    assert action_of(method, route, status) == action


def _claims(token: str) -> dict[str, Any]:
    import jwt

    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_only_an_admin_of_every_facility_reads_the_audit_trail(server: PacsServer) -> None:
    """The trail spans every facility: an admin of one facility is refused it (403)."""
    local = {"Authorization": f"Bearer {server.token('admin', facilities=('default',))}"}
    response = httpx.get(f"{server.url}/fhir/AuditEvent", headers=local)
    assert response.status_code == 403, response.text
    assert "every facility" in response.text


def test_stopping_the_archive_writes_the_open_windows_summaries(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    pacs = PacsServer(
        tmp_path_factory.mktemp("audit-stop") / "home", {"PACS_AUDIT_FRAME_WINDOW": "600"}
    ).start()
    try:
        assert store_statuses(pacs.port, [CT]) == {CT.name: status.SUCCESS}
        reader = {"Authorization": f"Bearer {pacs.token('radiologist')}"}
        frame = (
            f"{pacs.url}/dicom-web/studies/{STUDY}/series/{HEADER.SeriesInstanceUID}"
            f"/instances/{HEADER.SOPInstanceUID}/frames/1"
        )
        with httpx.Client(headers=reader) as client:
            assert [client.get(frame).status_code for _ in range(3)] == [200] * 3
    finally:
        pacs.stop()
    with sqlite3.connect(pacs.home / "index.db") as conn:
        details = [
            json.loads(row[0])
            for row in conn.execute(
                "SELECT detail FROM audit_event WHERE action = 'retrieve' ORDER BY day, seq"
            )
        ]
    assert [d.get("requests") for d in details] == [None, 2]
