"""Fuzzing a running ``pacs serve``: mutants of real files by C-STORE and STOW-RS, and
Hypothesis over the HTTP parameters and headers. No crash, no hang, no 5xx, each refusal with
its reason and the right status; the server keeps serving and ``pacs fsck`` stays clean.

``bench/fuzz.py`` runs the same with 10,000 inputs per interface over every file of data/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.fuzzing.campaign import Corpus, against_server
from bench.fuzzing.senders import multipart
from tests.fuzz.strategies import FHIR_NAMES, QIDO_NAMES, multipart_bodies, query_params
from tests.servers import DATA, PacsServer

# A corpus over the kinds of data/: CT (explicit VR LE), MR, CR (JPEG 2000, JPEG, implicit
# VR), secondary capture, big endian, deflated, and edge cases of pydicom's corpus.
SEEDS = [
    DATA / "edge-cases" / "CT_small.dcm",
    DATA / "edge-cases" / "MR_small.dcm",
    DATA / "edge-cases" / "MR_small_bigendian.dcm",
    DATA / "edge-cases" / "image_dfl.dcm",
    DATA / "edge-cases" / "SC_rgb_small_odd.dcm",
    DATA / "edge-cases" / "nested_priv_SQ.dcm",
    DATA / "edge-cases" / "ExplVR_BigEndNoMeta.dcm",
    DATA / "cxr" / "nih-dx-chest",
    DATA / "transfer-syntaxes",
]
INPUTS = 60  # per interface: about 20 s on a busy two-core machine


def _files() -> list[Path]:
    files: list[Path] = []
    for path in SEEDS:
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [p for p in files if p.suffix.lower() not in (".md", ".txt")]


def _reasoned(response: httpx.Response) -> bool:
    """A 4xx says why (problem+json detail), a 5xx never happens."""
    if response.status_code >= 500:
        return False
    if response.status_code >= 400:
        return bool(response.json().get("detail"))
    return True


@pytest.fixture(scope="module")
def writer(fuzz_server: PacsServer) -> Iterator[httpx.Client]:
    with fuzz_server.client("modality") as client:
        yield client


@pytest.fixture(scope="module")
def anonymous(fuzz_server: PacsServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fuzz_server.url) as client:
        yield client


@pytest.fixture(scope="module")
def reader(fuzz_server: PacsServer) -> Iterator[httpx.Client]:
    with fuzz_server.client("admin", facilities=("*",)) as client:
        yield client


def test_mutants_by_c_store_and_stow_rs(fuzz_server: PacsServer) -> None:
    corpus = Corpus.of(_files())
    assert len(corpus.seeds) >= 20
    run = against_server(corpus, fuzz_server, INPUTS, samples=4, concurrent=False)
    report = run.as_json()
    for tally in (run.cstore, run.stow):
        assert tally.inputs >= INPUTS
        assert tally.bugs == [], tally.bugs
        assert tally.accepted and sum(tally.refused.values())  # both outcomes were exercised
    assert run.echo_ok and run.alive
    assert report["fsck"]["consistent"], report["fsck"]
    assert run.indexed <= run.cstore.accepted + run.stow.accepted
    assert run.ok


@given(query_params(QIDO_NAMES), st.sampled_from(["studies", "series", "instances"]))
def test_qido_parameters(reader: httpx.Client, params: list[tuple[str, str]], level: str) -> None:
    response = reader.get(f"/dicom-web/{level}", params=params)
    assert _reasoned(response), response.text


@given(st.text(max_size=120))
def test_qido_accept_headers(reader: httpx.Client, accept: str) -> None:
    try:
        response = reader.get("/dicom-web/studies", headers={"Accept": accept.encode()})
    except httpx.LocalProtocolError:  # not a header httpx will send (control characters)
        return
    assert response.status_code in (200, 406), response.text
    assert _reasoned(response)


@given(
    query_params(FHIR_NAMES),
    st.sampled_from(["ImagingStudy", "Patient", "DiagnosticReport", "Observation"]),
)
def test_fhir_search_parameters(
    reader: httpx.Client, params: list[tuple[str, str]], resource: str
) -> None:
    response = reader.get(f"/fhir/{resource}", params=params)
    assert response.status_code < 500, response.text


@given(st.one_of(st.text(max_size=200), st.text(max_size=200).map(lambda t: f"Bearer {t}")))
def test_authorization_headers(anonymous: httpx.Client, header: str) -> None:
    try:
        response = anonymous.get("/dicom-web/studies", headers={"Authorization": header.encode()})
    except httpx.LocalProtocolError:
        return
    assert response.status_code == 401, response.text
    assert _reasoned(response)


@given(multipart_bodies(), st.sampled_from(["", "; charset=utf-8", '; type="text/plain"']))
def test_stow_rs_framing(
    writer: httpx.Client, body_and_boundary: tuple[bytes, str], extra: str
) -> None:
    """Broken multipart framing and content types: refused with a reason, never a 5xx."""
    body, boundary = body_and_boundary
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"{extra}'
    try:
        response = writer.post(
            "/dicom-web/studies", content=body, headers={"Content-Type": content_type.encode()}
        )
    except httpx.LocalProtocolError:
        return
    assert response.status_code < 500, response.text
    if response.status_code in (400, 413, 415):
        assert _reasoned(response)


def test_stow_rs_of_several_broken_parts(writer: httpx.Client) -> None:
    """One request, several parts, none storable: 409 with one FailureReason per part."""
    body, content_type = multipart([b"", b"DICM", bytes(200), b"\x08\x00\x05\x00CS\xff\xff"])
    response = writer.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
    )
    assert response.status_code == 409
    failed = response.json()["00081198"]["Value"]
    assert [item["00081197"]["Value"][0] for item in failed] == [0xC000] * 4
    assert response.headers["Warning"]
